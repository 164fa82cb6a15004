"""The live listening panel (issue 18), driven through its ipywidgets objects, no browser:
the text box and prompt menu, the voice list, results captioned and kept, one run at a
time, and Stop / Kernel > Interrupt ending a run within two frames."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from fastqwen.tools.notebook import listen

pytest.importorskip("ipywidgets")


@pytest.fixture
def sigint_restored():
    saved = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, saved)


def small(panel: listen.ListeningPanel, max_new: int = 5) -> listen.ListeningPanel:
    panel.max_new.value = max_new
    return panel


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_panel_reuses_the_set(tiny_run):
    assert listen.show_panel(tiny_run) is None  # interactive=False: nothing shown
    assert listen.build_panel(tiny_run).widget.children  # builds without a frontend
    first = tiny_run.outcomes[0]
    again = listen.generate_once(
        tiny_run, "aiden", first.prompt, tiny_run.settings.seed, max_new_tokens=5
    )
    assert again.report.codes.identical
    assert again.report.static.codes.equal(first.report.static.codes)
    assert listen.players_from_arrays(again.report).count("<audio") == 2


def test_typing_means_own_text_and_the_menu_shows_it(tiny_run):
    panel = listen.build_panel(tiny_run)
    one, two = tiny_run.settings.prompts[:2]
    assert panel.text.value == one and panel.prompt.value == 1
    panel.text.value = "My own words."
    assert panel.prompt.label == listen.OWN_TEXT  # never blank
    assert panel.choice().text == "My own words."  # typed text wins, no menu change needed
    panel.prompt.value = 2  # picking a prompt fills the box
    assert panel.text.value == two and panel.choice().text == two
    panel.text.value = one  # the box holds prompt 1 again: the menu says so
    assert panel.prompt.value == 1
    panel.prompt.value = 0  # "(own text)" picked from the menu: the box empties for typing
    assert panel.text.value == "" and panel.prompt.label == listen.OWN_TEXT
    with pytest.raises(ValueError, match="Type a text first"):
        panel.choice()
    panel.text.value = "Mine."
    panel.prompt.value = 0  # picked again: typed text is kept
    assert panel.text.value == "Mine."


def test_voice_list_offers_every_speaker(tiny_run):
    options = dict(listen.voice_options(tiny_run))
    supported = tiny_run.engine.get_supported_speakers()
    assert len(supported) > 1 and set(options) == set(supported)
    assert listen.voice_options(tiny_run)[0] == ("aiden", "aiden")  # the set's voice first


def test_icl_voice_list_has_the_references_and_an_own_recording(tmp_path):
    refs = (str(tmp_path / "a.wav"), str(tmp_path / "b.wav"))
    run = SimpleNamespace(settings=SimpleNamespace(set_name="icl", voices=refs), engine=None)
    values = [v for _, v in listen.voice_options(run)]
    assert values == [*refs, listen.OWN_RECORDING]


def test_results_say_what_made_them_newest_first(tiny_run, monkeypatch):
    outcome = tiny_run.outcomes[0]
    monkeypatch.setattr(listen, "generate_once", lambda *a, **kw: outcome)
    panel = small(listen.build_panel(tiny_run))
    for seed in range(1, listen.HISTORY + 3):
        panel.seed.value = seed
        panel.generate()
        panel.wait()
    assert len(panel.history) == len(panel.results.children) == listen.HISTORY
    newest = panel.results.children[0].value
    assert f"seed {listen.HISTORY + 2}," in newest and "aiden" in newest
    assert "max_new_tokens 5" in newest and "temperature" in newest and "top_k" in newest
    assert tiny_run.settings.prompts[0][:40] in newest
    assert f"seed {listen.HISTORY + 1}," in panel.results.children[1].value
    # How each side ended, in words.
    assert "cut at max tokens" in newest or "ended (EOS)" in newest
    assert "eos False" not in newest and "eos True" not in newest


def test_a_real_run_lists_its_result_quietly(tiny_run, caplog):
    panel = small(listen.build_panel(tiny_run))
    with caplog.at_level(logging.WARNING):
        panel.generate_button.click()
        panel.wait()
    assert panel.status.value == "" and not panel.generate_button.disabled
    assert panel.results.children[0].value.count("<audio") == 2
    assert "4 frames" in panel.results.children[0].value
    assert "pad_token_id" not in caplog.text


def test_a_second_generate_while_running_is_ignored(tiny_run, monkeypatch):
    release, calls = threading.Event(), []

    def slow(*args, **kwargs):
        calls.append(args)
        release.wait(30)
        return tiny_run.outcomes[0]

    monkeypatch.setattr(listen, "generate_once", slow)
    panel = listen.build_panel(tiny_run)
    panel.generate_button.click()
    assert panel.generate_button.disabled and not panel.stop_button.disabled
    panel.generate_button.click()  # a double click
    panel.generate()  # or a click that got in before the button greyed out
    release.set()
    panel.wait()
    assert len(calls) == 1 and len(panel.history) == 1
    assert not panel.generate_button.disabled and panel.stop_button.disabled


def counted_frames(run, monkeypatch) -> list[int]:
    """Count the engine's frames as they run."""
    frames, real = [0], run.engine.runner.step

    def step(m, mode):
        inner = real(m, mode)

        def one() -> None:
            inner()
            frames[0] += 1

        return one

    monkeypatch.setattr(run.engine.runner, "step", step)
    return frames


@pytest.mark.parametrize("how", ["stop button", "kernel interrupt"])
def test_a_stop_request_ends_the_run_within_two_frames(tiny_run, monkeypatch, sigint_restored, how):
    frames = counted_frames(tiny_run, monkeypatch)
    panel = small(listen.build_panel(tiny_run), max_new=512)
    panel.generate_button.click()
    wait_for(lambda: frames[0] >= 3)
    at_stop = frames[0]
    if how == "stop button":
        panel.stop_button.click()
    else:  # what Kernel > Interrupt sends the kernel process
        os.kill(os.getpid(), signal.SIGINT)
    panel.wait(60)
    assert not panel.running
    assert at_stop <= frames[0] <= at_stop + 2, (at_stop, frames[0])
    assert panel.status.value.startswith("stopped after") and not panel.history
    assert not panel.generate_button.disabled and panel.stop_button.disabled


def test_interrupt_outside_a_run_does_what_it_did(tiny_run, monkeypatch, sigint_restored):
    # Python's own handler, whatever the test process inherited: a shell's background job
    # starts with SIGINT ignored, and then "what it did" is nothing
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(listen, "generate_once", lambda *a, **kw: tiny_run.outcomes[0])
    panel = listen.build_panel(tiny_run)
    panel.generate_button.click()
    panel.wait()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_details_read_well(tiny_run):
    assert listen.frames_text(1) == "1 frame" and listen.frames_text(2) == "2 frames"
    assert listen.ending_text(True) == "ended (EOS)"
    assert listen.ending_text(False) == "cut at max tokens"
    panel = listen.build_panel(tiny_run)
    for w in (panel.temperature, panel.rep, panel.max_new, panel.top_p):
        assert w.style.description_width == listen.STYLE["description_width"]
    panel.seed.value = 2**70
    panel.generate_button.click()
    assert "from 0 to 18446744073709551615" in panel.status.value
    assert not panel.running and not panel.generate_button.disabled


def test_an_own_recording_is_cloned_with_its_text():
    calls = []

    def clone(path, text):
        calls.append((path, text))
        return ["prompt items"]

    run = SimpleNamespace(
        settings=SimpleNamespace(set_name="icl", language="english"),
        references=[],
        engine=SimpleNamespace(create_voice_clone_prompt=clone),
    )
    with pytest.raises(ValueError, match="text spoken in your recording"):
        listen.panel_request(run, listen.Choice("/x/mine.wav", "Hi.", 1))
    request = listen.panel_request(run, listen.Choice("/x/mine.wav", "Hi.", 1, {}, "Hello."))
    assert calls == [("/x/mine.wav", "Hello.")]
    assert request.voice_clone_prompt == ["prompt items"] and request.text == "Hi."


def test_kernel_interrupt_reaches_an_idle_kernel_only_while_armed():
    # A real ipykernel: while idle it ignores SIGINT, and it restores its own handler after
    # every message. Armed from a cell (as from the Generate callback), Kernel > Interrupt
    # must set the run's event; disarmed from another thread (as the run's worker does),
    # an interrupt is ignored again and the kernel lives on.
    jupyter_client = pytest.importorskip("jupyter_client.manager")
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3")

    def run(code: str) -> str:
        kc.execute(code)
        kc.get_shell_msg(timeout=60)
        out = []
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append(msg["content"]["ename"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out).strip()

    try:
        run(
            "import signal, threading\n"
            "from fastqwen.tools.notebook.interrupt import InterruptStops\n"
            "stop = threading.Event()\n"
            "route = InterruptStops(stop)\n"
            "route.arm()"
        )
        time.sleep(0.3)
        km.interrupt_kernel()
        time.sleep(0.3)
        assert run("print(stop.is_set())") == "True"
        run("stop.clear(); t = threading.Thread(target=route.disarm); t.start(); t.join()")
        time.sleep(0.3)
        idle = "get_ipython().kernel.saved_sigint_handler == signal.SIG_IGN"
        assert run(f"print({idle})") == "True"
        km.interrupt_kernel()
        time.sleep(0.3)
        assert run("print(stop.is_set(), 'alive')") == "False alive"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_icl_panel_takes_an_own_recording_and_its_text(tmp_path):
    from fastqwen.config import SamplingParams

    ref = str(tmp_path / "ref.wav")
    settings = SimpleNamespace(
        set_name="icl", voices=(ref,), prompts=("A.", "B."), seed=1, sampling=SamplingParams()
    )
    panel = listen.build_panel(SimpleNamespace(settings=settings, engine=None, references=[]))
    assert panel.choice().voice == ref and panel.choice().ref_text is None
    panel.voice.value = listen.OWN_RECORDING
    with pytest.raises(ValueError, match="path of your recording"):
        panel.choice()
    panel.ref_path.value, panel.ref_text.value = " /x/mine.wav ", "What I said."
    choice = panel.choice()
    assert (choice.voice, choice.ref_text, choice.text) == ("/x/mine.wav", "What I said.", "A.")
