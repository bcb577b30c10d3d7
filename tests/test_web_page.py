"""The chat page of ``anygpt serve`` in a real browser: headless Chromium (Debian's package) driven
through Selenium, against a server on a free loopback port serving the debug bundle.

The page is used as a person would use it (typing, attaching files, the microphone, the keyboard
alone, a phone-sized window) and what it shows is checked.  A recorder installed before the page's
own script keeps the JSON bodies the page sends, so the tests also check that it speaks the
OpenAI-compatible API.  Screenshots are written under each test's ``tmp_path``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

STARTUP_S = 90.0  # the server imports torch and loads the bundle's LLM
REPLY_S = 60.0
MAX_TOKENS = 100


def _chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or why the browser tests cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return "headless Chromium is not installed (apt-get install chromium chromium-driver)"
    return browser, driver


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(isinstance(CHROMIUM, str), reason=str(CHROMIUM))

# Wraps fetch before the page runs: keeps each request's path and JSON body in window.sentRequests.
RECORD_REQUESTS = """
window.sentRequests = [];
const pageFetch = window.fetch.bind(window);
window.fetch = (url, options = {}) => {
  let body = null;
  try { body = options.body ? JSON.parse(options.body) : null; } catch (e) { body = String(options.body); }
  window.sentRequests.push({url: String(url), method: options.method || "GET", body});
  return pageFetch(url, options);
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``anygpt serve`` in a subprocess; its output goes to ``log``."""

    def __init__(self, bundle: Path, log: Path) -> None:
        self.bundle = Path(bundle)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.ready = False
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "anygpt", "serve", "--model", str(bundle)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--seed", "0"]
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def wait_ready(self) -> None:
        if self.ready:
            return
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"anygpt serve exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready = True
                        return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"anygpt serve did not answer /health in {STARTUP_S:g} s:\n{self.tail()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    """Servers on the shipped model and on the debug bundle, started together (their start-ups
    overlap, the first also with writing the debug bundle) and stopped at the end of the module."""
    from anygpt.paths import default_model

    logs = tmp_path_factory.mktemp("serve")
    started = {}
    try:
        if (default_model() / "bundle.json").is_file():
            started["shipped"] = Server(default_model(), logs / "shipped.log")
        started["debug"] = Server(request.getfixturevalue("debug_bundle"), logs / "debug.log")
        yield started
    finally:
        for srv in started.values():
            srv.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    servers["debug"].wait_ready()
    return servers["debug"]


@pytest.fixture(scope="module")
def shipped_server(servers) -> Server:
    """The server on the shipped default model (``models/anygpt-nano``)."""
    if "shipped" not in servers:
        pytest.skip("the shipped model is not here")
    servers["shipped"].wait_ready()
    return servers["shipped"]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = CHROMIUM
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # Chromium's sandbox refuses to run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1000",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream",  # a synthetic microphone, once permission is given
        "--lang=en-US",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_REQUESTS})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A spoken-length wav and ogg, a picture, a voice prompt and an unreadable 'wav'."""
    from PIL import Image, ImageDraw

    d = tmp_path_factory.mktemp("page-files")
    t = np.arange(int(16000 * 1.0)) / 16000
    sf.write(d / "question.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    sf.write(d / "voice.wav", 0.2 * np.sin(2 * np.pi * 150 * t), 16000)
    picture = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(picture).ellipse((12, 12, 52, 52), fill=(220, 30, 30))
    picture.save(d / "picture.png")
    sf.write(
        d / "spoken.ogg", 0.3 * np.sin(2 * np.pi * 330 * t), 16000, format="OGG", subtype="VORBIS"
    )
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    return {p.stem: p for p in d.iterdir()}


# ---------------------------------------------------------------------- helpers
class Page:
    """The page in the browser, with waits that report what it shows when they time out."""

    def __init__(self, driver, server: Server, shots: Path) -> None:
        self.driver = driver
        self.server = server
        self.shots = shots
        self.set_microphone("denied")
        driver.set_window_size(1100, 1000)
        driver.get(server.url + "/")
        self.wait(lambda: self.js("return document.querySelectorAll('#model option').length"))
        # short replies keep the random debug model quick (the field a person sets to bound replies)
        self.js("document.getElementById('max-tokens').value = arguments[0]", MAX_TOKENS)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self) -> str:
        return self.js("return document.body.innerText")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def wait(self, condition, timeout: float = REPLY_S, what: str = "the page"):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.shot("timeout")
                pytest.fail(
                    f"timed out waiting for {what}; the page shows:\n{self.text()}\n"
                    f"server log:\n{self.server.tail()}"
                )
            time.sleep(0.1)

    def replies(self) -> list:
        return self.all(".turn.assistant")

    def wait_reply(self, count: int):
        """The ``count``-th reply, once it has finished (or failed)."""
        self.wait(
            lambda: len(self.all(".turn.assistant[data-done], .turn.assistant.failed")) >= count,
            what=f"reply {count}",
        )
        return self.replies()[count - 1]

    def attach(self, *paths: Path) -> None:
        before = len(self.all("#attachments .chip"))
        for p in paths:
            self.find("#file").send_keys(str(p))
        self.wait(lambda: len(self.all("#attachments .chip")) == before + len(paths), 10, "chips")

    def reply_as(self, modality: str) -> None:
        self.find(f'input[name="reply"][value="{modality}"]').click()

    def chat_requests(self) -> list[dict]:
        sent = self.js("return window.sentRequests")
        return [r["body"] for r in sent if r["url"].endswith("/v1/chat/completions")]

    def set_microphone(self, setting: str) -> None:
        self.driver.execute_cdp_cmd(
            "Browser.setPermission",
            {
                "origin": self.server.url,
                "permission": {"name": "microphone"},
                "setting": setting,
            },
        )

    def hold_mic(self, seconds: float, keyboard: bool = False) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        mic = self.find("#mic")
        if keyboard:
            self.js("arguments[0].focus()", mic)
            ActionChains(self.driver).key_down(" ").pause(seconds).key_up(" ").perform()
        else:
            ActionChains(self.driver).click_and_hold(mic).pause(seconds).release().perform()


@pytest.fixture
def page(browser, server, tmp_path) -> Page:
    return Page(browser, server, tmp_path)


def _media_seconds(page: Page, element) -> float:
    """Duration of an <audio> element once its metadata is loaded."""
    return page.wait(
        lambda: page.js(
            "const a = arguments[0]; return a.readyState >= 1 && isFinite(a.duration) ? a.duration : 0",
            element,
        ),
        10,
        "audio metadata",
    )


def _shown_picture(page: Page, turn) -> dict:
    """Natural size of the first picture in a turn, once it has loaded."""
    return page.wait(
        lambda: page.js(
            "const i = arguments[0].querySelector('img.picture');"
            "return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null",
            turn,
        ),
        10,
        "a picture",
    )


def _wav_seconds(b64: str) -> float:
    info = sf.info(io.BytesIO(base64.b64decode(b64)))
    return info.frames / info.samplerate


# ---------------------------------------------------------------------- tests
def test_typed_message_gets_a_streamed_text_reply(page):
    # the address the server prints is the page's
    assert (
        re.search(r"serving \S+ at (\S+) ", page.server.log.read_text())[1] == page.server.url + "/"
    )
    assert "anygpt" in page.find("#model").get_attribute("value")
    assert page.js("return document.activeElement.id") == "message"
    page.find("#message").send_keys("hello there\n")  # Enter sends
    reply = page.wait_reply(1)
    page.shot("text-reply")
    assert "failed" not in reply.get_attribute("class"), page.text()
    assert page.find(".turn.user .text").text == "hello there"
    answer = reply.find_element("css selector", ".text").text.strip()
    assert answer
    status = page.js("return document.getElementById('status').textContent")
    assert status.startswith("AnyGPT replied: ") and len(status) > len("AnyGPT replied: ")
    (body,) = page.chat_requests()
    assert body["stream"] is True and body["modalities"] == ["text"]
    assert body["max_tokens"] == MAX_TOKENS
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    ]
    # the page reaches only its own server, only through the API (and its own static files)
    fetched = page.js(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name))"
        ".filter(u => u.protocol !== 'data:' && u.protocol !== 'blob:')"
        ".map(u => [u.origin, u.pathname])"
    )
    assert fetched and all(origin == page.server.url for origin, _ in fetched), fetched
    assert all(p.startswith("/v1/") or p in ("/app.js", "/style.css") for _, p in fetched), fetched
    assert (
        page.js("return document.querySelectorAll('script[src^=http], link[href^=http]').length")
        == 0
    )
    assert page.find("#progress").get_attribute("hidden") is not None  # progress gone when done


def test_uploaded_wav_and_image_get_a_spoken_reply_in_a_chosen_voice(page, files):
    page.find("#message").send_keys("what is in the picture?")
    page.attach(files["question"], files["picture"])
    page.find("#voice-file").send_keys(str(files["voice"]))
    page.wait(lambda: page.find("#voice").get_attribute("value") != "", 10, "the voice option")
    page.reply_as("speech")
    page.find("#send").click()
    assert page.find("#progress").is_displayed()  # progress while waiting
    reply = page.wait_reply(1)
    page.shot("spoken-reply")
    assert "failed" not in reply.get_attribute("class"), page.text()

    user = page.find(".turn.user")
    assert _shown_picture(page, user) == [64, 64]
    assert _media_seconds(page, user.find_element("css selector", "audio")) == pytest.approx(
        1.0, abs=0.05
    )

    player = reply.find_element("css selector", ".audio-reply")
    assert player.get_attribute("data-state") == "done"
    assert player.get_attribute("data-started-at-chunk") == "1"  # played from the first chunk,
    assert float(player.get_attribute("data-started-before-end-ms")) > 0  # before the reply ended
    assert player.get_attribute("data-clock") == "running"  # on a running audio clock
    seconds = _media_seconds(page, player.find_element("css selector", "audio"))
    assert seconds == pytest.approx(float(player.get_attribute("data-seconds")), abs=0.05)
    assert seconds > 0

    (body,) = page.chat_requests()
    assert body["modalities"] == ["text", "audio"] and body["audio"]["format"] == "pcm16"
    assert _wav_seconds(body["audio"]["voice_prompt"]) == pytest.approx(1.0, abs=0.01)
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "input_audio", "image_url"]
    assert parts[1]["input_audio"]["format"] == "wav"
    assert _wav_seconds(parts[1]["input_audio"]["data"]) == pytest.approx(1.0, abs=0.01)
    assert parts[2]["image_url"]["url"].startswith("data:image/png;base64,")


def test_image_and_music_replies(page):
    page.reply_as("image")
    page.find("#message").send_keys("a red circle\n")
    first = page.wait_reply(1)
    assert "failed" not in first.get_attribute("class"), page.text()
    assert _shown_picture(page, first)[0] > 0
    sent = page.js("return window.sentRequests.map(r => r.url)")
    assert any(u.endswith("/v1/images/generations") for u in sent), sent

    page.find("#message").send_keys("draw it again\n")  # a later turn: through the chat
    second = page.wait_reply(2)
    assert "failed" not in second.get_attribute("class"), page.text()
    assert _shown_picture(page, second)[0] > 0

    page.reply_as("music")
    page.find("#message").send_keys("a calm piano melody\n")
    third = page.wait_reply(3)
    page.shot("image-and-music")
    assert "failed" not in third.get_attribute("class"), page.text()
    assert _media_seconds(page, third.find_element("css selector", ".audio-reply audio")) > 0
    chats = page.chat_requests()
    assert [c["modalities"] for c in chats] == [["text", "image"], ["text", "music"]]
    assert [m["role"] for m in chats[-1]["messages"]] == ["user", "assistant"] * 2 + ["user"]


def test_server_errors_are_shown_plainly_and_the_page_goes_on(page, files):
    page.attach(files["broken"])
    page.find("#send").click()
    failed = page.wait_reply(1)
    page.shot("server-error")
    error = failed.find_element("css selector", ".error")
    assert error.get_attribute("role") == "alert"
    assert "400" in error.text and "unreadable audio" in error.text, error.text
    page.find("#message").send_keys("still there?\n")
    reply = page.wait_reply(2)
    assert "failed" not in reply.get_attribute("class"), page.text()
    # the failed turn was not kept in the conversation sent to the server
    assert len(page.chat_requests()[-1]["messages"]) == 1


def test_refused_microphone_leaves_uploads_working_and_push_to_talk_records(page, files):
    page.hold_mic(0.5)
    note = page.wait(lambda: page.find("#mic-note").text, 10, "the microphone note")
    assert "refused" in note and "attach an audio file" in note
    page.attach(files["spoken"])  # an ogg file: the browser decodes it and sends 16 kHz wav
    page.find("#send").click()
    assert "failed" not in page.wait_reply(1).get_attribute("class"), page.text()
    uploaded = page.chat_requests()[0]["messages"][-1]["content"][0]["input_audio"]
    assert uploaded["format"] == "wav"
    assert _wav_seconds(uploaded["data"]) == pytest.approx(1.0, abs=0.03)  # codec edges

    page.set_microphone("granted")
    page.hold_mic(1.5)  # pointer held down on the button
    page.wait_reply(2)
    page.hold_mic(1.5, keyboard=True)  # Space held on the focused button
    page.wait_reply(3)
    page.shot("push-to-talk")
    users = page.all(".turn.user")
    assert [u.text.split("\n")[-1] for u in users[1:]] == ["recording 1.wav", "recording 2.wav"]
    held = [_media_seconds(page, u.find_element("css selector", "audio")) for u in users[1:]]
    # about as long as held, less the time the microphone takes to open on a busy machine
    assert all(0.5 < h < 2.5 for h in held), held
    recorded = page.chat_requests()[1]["messages"][-1]["content"][0]["input_audio"]["data"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(recorded)))
    assert rate == 16000 and np.abs(wave).max() > 0.01  # the synthetic microphone's beeps


def test_keyboard_alone_at_phone_width(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.driver.set_window_size(390, 844)
    page.find("#message").send_keys("hi")
    order = []
    keys = ActionChains(page.driver)
    for _ in range(4):
        keys.send_keys(Keys.TAB).perform()
        order.append(
            page.js("const a = document.activeElement; return a.id || a.name || a.tagName")
        )
    assert order[:4] == ["send", "mic", "attach", "reply"], order
    keys.send_keys(Keys.ARROW_RIGHT).perform()  # the reply choice: text -> speech
    assert page.js("return document.querySelector('input[name=reply]:checked').value") == "speech"
    keys.key_down(Keys.SHIFT).send_keys(Keys.TAB * 3).key_up(Keys.SHIFT).send_keys(
        Keys.ENTER
    ).perform()
    reply = page.wait_reply(1)
    page.shot("phone-width")
    assert "failed" not in reply.get_attribute("class"), page.text()
    assert reply.find_elements("css selector", ".audio-reply audio")
    # nothing wider than the phone: no sideways scrolling
    assert page.js("return document.documentElement.scrollWidth <= window.innerWidth")
    # and the message box stays in view: only the conversation scrolls
    assert page.js("return document.documentElement.scrollHeight <= window.innerHeight")
    assert page.js("return document.getElementById('send').getBoundingClientRect().bottom") < 844
    wide = page.js(
        "return [...document.querySelectorAll('button, select, textarea, .turn, audio, img')]"
        ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.outerHTML.slice(0, 80))"
    )
    assert wide == []


def test_dropped_file_is_attached_and_clear_forgets_the_conversation(page, files):
    page.find("#message").send_keys("first\n")
    page.wait_reply(1)
    data = base64.b64encode(files["picture"].read_bytes()).decode()
    page.js(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "for (const type of ['dragenter', 'dragover', 'drop'])"
        "  document.body.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true}));",
        data,
    )
    page.wait(lambda: page.all("#attachments .chip"), 10, "the dropped file")
    assert "dropped.png" in page.find("#attachments").text
    assert page.find("#drop-zone").get_attribute("hidden") is not None
    page.find("#clear").click()
    assert page.all(".turn") == [] and page.all("#attachments .chip") == []
    assert page.find("#empty").is_displayed()
    page.find("#message").send_keys("second\n")
    page.wait_reply(1)
    assert page.chat_requests()[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "second"}]}
    ]


def test_spoken_conversation_with_the_shipped_model(browser, shipped_server, tmp_path):
    demo = shipped_server.bundle / "demo"
    page = Page(browser, shipped_server, tmp_path)
    page.js("document.getElementById('max-tokens').value = ''")  # the model's own limits
    assert page.find("#model").get_attribute("value") == "anygpt-nano"
    page.reply_as("speech")
    page.attach(demo / "question.wav", demo / "picture.png")  # a spoken question about a picture
    page.find("#send").click()
    first = page.wait_reply(1)
    page.find("#message").send_keys("and what shape is it?\n")  # a typed follow-up, spoken reply
    second = page.wait_reply(2)
    page.shot("shipped-model")
    for reply in (first, second):
        assert "failed" not in reply.get_attribute("class"), page.text()
        player = reply.find_element("css selector", ".audio-reply")
        assert player.get_attribute("data-started-at-chunk") == "1"
        assert float(player.get_attribute("data-started-before-end-ms")) > 0
        assert _media_seconds(page, player.find_element("css selector", "audio")) > 0.2
    later = page.chat_requests()[-1]["messages"]
    assert [m["role"] for m in later] == ["user", "assistant", "user"]


def test_stop_ends_a_long_spoken_reply_and_keeps_what_came(page):
    page.js("document.getElementById('max-tokens').value = ''")  # the debug model talks long
    page.reply_as("speech")
    page.find("#message").send_keys("talk for a while\n")
    page.wait(lambda: page.all('.audio-reply[data-state="playing"]'), what="the first audio")
    page.shot("long-reply-playing")
    assert page.find("#progress").is_displayed()
    page.find("#stop").click()
    stopped = page.wait_reply(1)
    assert "failed" in stopped.get_attribute("class") and "Stopped." in stopped.text
    assert not page.find("#progress").is_displayed()
    kept = stopped.find_element("css selector", ".audio-reply audio")  # what came can be replayed
    assert _media_seconds(page, kept) > 0
    page.js("document.getElementById('max-tokens').value = arguments[0]", MAX_TOKENS)
    page.find("#message").send_keys("a short one\n")
    assert "failed" not in page.wait_reply(2).get_attribute("class"), page.text()
    assert len(page.chat_requests()[-1]["messages"]) == 1  # the stopped turn is not kept
