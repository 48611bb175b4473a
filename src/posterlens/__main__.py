"""``python -m posterlens``: the command line."""

from posterlens.app.cli import main

if __name__ == "__main__":
    main()
