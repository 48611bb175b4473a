"""The page in a real Chromium (headless, Selenium) against a real server on 127.0.0.1."""

from __future__ import annotations

import shutil

import pytest

import posterlens
from posterlens.app import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1400")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_shows_genres_score_heat_map_and_similar_posters(browser, trained_model, shared_cache, sample_dir,
                                                              tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = posterlens.load(trained_model, shared_cache)
    with serve.background(serve.create_app(predictor)) as url:
        browser.get(url)
        browser.find_element(By.ID, "file").send_keys(str(sample_dir / "images" / "tt0085154.jpg"))
        wait = WebDriverWait(browser, 120)
        wait.until(ready.visibility_of_element_located((By.ID, "heat-controls")))
        wait.until(lambda b: all(img.get_property("naturalWidth") > 0
                                 for img in b.find_elements(By.CSS_SELECTOR, "#similar img")))
        screenshot = tmp_path / "page.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li.genre")
        assert len(bars) == len(predictor.model.genres)
        assert browser.find_elements(By.CSS_SELECTOR, "#bars li.predicted")
        assert browser.find_element(By.ID, "score").text.endswith("/ 10")
        assert browser.find_element(By.ID, "poster").get_attribute("src").startswith("data:image/png;base64,")
        assert browser.find_elements(By.CSS_SELECTOR, "#heat-genres button")
        posters = browser.find_elements(By.CSS_SELECTOR, "#similar img")
        assert len(posters) >= 5 and all("/api/poster/" in img.get_attribute("src") for img in posters)
        assert browser.find_element(By.ID, "status").text == ""
        assert not browser.find_element(By.ID, "url-form").is_displayed()  # URL fetching is off


def test_the_released_models_similar_movies_show_posters_anywhere(browser, shared_cache, sample_dir, tmp_path):
    """The released model carries its training posters' thumbnails: with no catalogue on this machine
    (no ``../shared``: its recorded catalogue is made unreadable here), every similar movie has a poster."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = posterlens.load(None, shared_cache)
    predictor.__dict__["poster_files"] = {}  # as on a machine without the training catalogue
    with serve.background(serve.create_app(predictor)) as url:
        browser.get(url)
        browser.find_element(By.ID, "file").send_keys(str(sample_dir / "images" / "tt0086393.jpg"))
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#similar img")) >= 5)
        wait.until(lambda b: all(img.get_property("complete") for img in b.find_elements(By.CSS_SELECTOR, "#similar img")))
        images = browser.find_elements(By.CSS_SELECTOR, "#similar img")
        browser.save_screenshot(str(tmp_path / "released.png"))
        assert all("/api/poster/" in img.get_attribute("src") for img in images)
        assert all(img.get_property("naturalWidth") > 0 for img in images)


def test_the_page_warns_when_an_image_is_not_like_a_poster(browser, shared_cache, sample_dir, tmp_path):
    """The released model: a page of text gets a plain warning; a poster gets none, and both show the
    score's interval and the genres' confidence."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data

    page = tmp_path / "page.png"
    Image.fromarray(data.page()).convert("RGB").resize((182, 268)).save(page)
    with serve.background(serve.create_app(posterlens.load(None, shared_cache))) as url:
        browser.get(url)
        shown = {}
        for image in (page, sample_dir / "images" / "tt0086393.jpg"):
            browser.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(browser, 120).until(lambda b: "between" in b.find_element(By.ID, "score-interval").text
                                              and b.find_element(By.ID, "poster").get_attribute("src") != shown.get("src"))
            shown = {"src": browser.find_element(By.ID, "poster").get_attribute("src"),
                     "warning": browser.find_element(By.ID, "domain-warning").is_displayed(),
                     "confidence": browser.find_element(By.ID, "confidence").text}
            browser.save_screenshot(str(tmp_path / f"{image.stem}.png"))
            assert shown["confidence"].startswith("confidence ")
            assert shown["warning"] == (image == page), image
