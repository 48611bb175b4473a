"""``python -m posterlens``: the command line."""

from posterlens.cli import main

if __name__ == "__main__":
    main()
