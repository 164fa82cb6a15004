"""The live listening panel of the parity notebooks (ipywidgets).

Pick a voice (any speaker the CustomVoice model supports; for ICL one of the set's
recordings or a file of your own with its text), a prompt or your own text, the seed and
the main sampling settings, press Generate, and hear the static engine and the `qwen_tts`
reference side by side with their timing. It reuses the set's loaded model and the same
library calls as the batch run (`samplesets.run.make_request`, `samplesets.run.run_pair`);
nothing is written to disk. The sliders set codebook 0 (the talker), as the parameters of
the same names do; the code predictor keeps the set's `subtalker_*` settings.

The text box is the one source of the text: picking a prompt fills it, typing in it makes
the menu show "(own text)". Each result is listed with what made it (voice, text, seed,
settings), newest first, the last `HISTORY` kept.

A run goes in a background thread, so the kernel stays free for the Stop button: Stop, or
Kernel > Interrupt (`interrupt.InterruptStops`), sets the run's stop event and the engine
and the reference end within a block of frames (`fastqwen.GenerationStopped`). Generate is
disabled from its click until the run ends, and a click while running is ignored.

The panel is shown only when `settings.interactive` is true, which `make report` and the
notebook tests turn off. Displaying it never waits for input.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass, field

from fastqwen.api import SEED_RANGE
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.results import GenerationStopped
from fastqwen.tools.notebook.interrupt import InterruptStops
from fastqwen.tools.notebook.views import SIDE_LABELS, timing_table
from fastqwen.tools.quiet import quiet_known_noise
from fastqwen.tools.samplesets.run import PairOutcome, SetRun, make_request, run_pair
from fastqwen.tools.samplesets.settings import rel

log = logging.getLogger(__name__)
OWN_TEXT = "(own text)"  # the prompt menu's entry while the box holds text of your own
OWN_RECORDING = "(own recording: path below)"  # the ICL voice menu's entry for your file
HISTORY = 5  # results kept in the panel, newest first
MAX_SEED = SEED_RANGE[1]  # the reference seeds torch with a non-negative integer
STYLE = {"description_width": "100px"}  # wide enough for every label ("rep. penalty")


def frames_text(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def ending_text(eos_reached: bool) -> str:
    return "ended (EOS)" if eos_reached else "cut at max tokens"


def check_seed(seed: int) -> str | None:
    """The panel's message for a seed both sides cannot use, or None."""
    if not 0 <= seed <= MAX_SEED:
        return f"The seed must be an integer from 0 to {MAX_SEED}; got {seed}."
    return None


@dataclass
class Choice:
    """What one Generate asks for, and the caption of its result."""

    voice: str  # a speaker, or a recording's path
    text: str
    seed: int
    sampling: dict = field(default_factory=dict)  # SamplingParams overrides
    ref_text: str | None = None  # an own ICL recording's text

    def caption(self, set_name: str) -> str:
        voice = rel(self.voice) if set_name == "icl" else self.voice
        settings = ", ".join(f"{k} {v}" for k, v in self.sampling.items())
        return (
            f"<b>{html.escape(voice)}</b>, seed {self.seed}, {html.escape(settings)}<br>"
            f"<i>{html.escape(self.text)}</i>"
        )


def voice_options(run: SetRun) -> list[tuple[str, str]]:
    """(label, value) of every voice: the set's first, then the model's other speakers;
    for ICL the set's recordings and an own recording."""
    s = run.settings
    if s.set_name == "icl":
        return [(rel(v), v) for v in s.voices] + [(OWN_RECORDING, OWN_RECORDING)]
    supported = run.engine.get_supported_speakers() if run.engine is not None else None
    others = sorted(v for v in (supported or []) if v not in s.voices)
    return [(v, v) for v in (*s.voices, *others)]


def panel_request(run: SetRun, choice: Choice) -> VoiceRequest:
    """The request of a choice: the batch run's, or a voice clone of an own recording."""
    s = run.settings
    if s.set_name == "icl" and not any(str(r.path) == choice.voice for r in run.references):
        if not (choice.ref_text or "").strip():
            raise ValueError("type the text spoken in your recording (ICL needs it)")
        clone = run.engine.create_voice_clone_prompt(choice.voice, choice.ref_text)
        return VoiceRequest("voice_clone", choice.text, s.language, voice_clone_prompt=clone)
    return make_request(s, choice.voice, choice.text, run.references)


def generate_once(
    run: SetRun,
    voice: str,
    text: str,
    seed: int,
    *,
    ref_text: str | None = None,
    stop: threading.Event | None = None,
    **sampling,
) -> PairOutcome:
    """One static + dynamic generation with the set's model (no teacher forcing, no files)."""
    params = run.settings.sampling_params(**sampling)
    request = panel_request(run, Choice(voice, text, seed, sampling, ref_text))
    outcome = PairOutcome(run.settings.set_name, voice, 0, text)
    outcome.report, outcome.stream = run_pair(
        run.engine, request, params, seed, teacher_forcing=False, stop=stop
    )
    return outcome


def players_from_arrays(report) -> str:
    """Static and dynamic players side by side, from in-memory audio (normalize=False)."""
    from IPython.display import Audio

    cells, heads = [], []
    for side in ("static", "dynamic"):
        result = getattr(report, side)
        player = Audio(result.audio, rate=result.sample_rate, normalize=False)
        heads.append(f"<th>{SIDE_LABELS[side]}</th>")
        cells.append(f"<td>{player._repr_html_()}</td>")
    return f"<table><tr>{''.join(heads)}</tr><tr>{''.join(cells)}</tr></table>"


def result_html(choice: Choice, outcome: PairOutcome, set_name: str) -> str:
    """One result: what made it, both players, how each side ended, timing, code parity."""
    sides = "; ".join(
        f"{name}: {frames_text(r.frames)}, {ending_text(r.eos_reached)}"
        for name, r in (("static", outcome.report.static), ("dynamic", outcome.report.dynamic))
    )
    codes = outcome.report.codes
    same = "identical on both sides" if codes.identical else codes.describe()
    return (
        f"<div>{choice.caption(set_name)}</div>{players_from_arrays(outcome.report)}"
        f"<div>{sides}</div>{timing_table(outcome).to_html()}"
        f"<div>codes: {html.escape(same)}</div><hr>"
    )


class ListeningPanel:
    """The widgets, and a run in flight. `widget` is what the notebook displays."""

    def __init__(self, run: SetRun):
        import ipywidgets as W

        quiet_known_noise()  # the reference's "Setting `pad_token_id`" on every run
        self.run = run
        s, sp = run.settings, run.settings.sampling
        self.voice = W.Dropdown(options=voice_options(run), description="voice", style=STYLE)
        self.prompts = list(s.prompts)
        options = [(f"{k}: {p[:60]}", k) for k, p in enumerate(self.prompts, start=1)]
        self.prompt = W.Dropdown(
            options=options + [(OWN_TEXT, 0)], description="prompt", style=STYLE
        )
        self.text = W.Textarea(
            value=self.prompts[0] if self.prompts else "",
            placeholder="type your own text, or pick a prompt above to fill this box",
            description="text",
            style=STYLE,
            layout=W.Layout(width="90%"),
        )
        self.ref_path = W.Text(description="own recording", style=STYLE)
        self.ref_text = W.Text(description="its text", style=STYLE, layout=W.Layout(width="90%"))
        self.seed = W.IntText(value=s.seed, description="seed", style=STYLE)
        self.max_new = W.IntSlider(
            value=min(sp.max_new_tokens, 256),
            min=2,
            max=max(512, sp.max_new_tokens),
            description="max tokens",
            style=STYLE,
        )
        self.temperature = W.FloatSlider(
            value=sp.temperature, min=0.05, max=1.5, step=0.05, description="temperature"
        )
        self.top_k = W.IntSlider(value=sp.top_k, min=0, max=200, description="top_k")
        self.top_p = W.FloatSlider(value=sp.top_p, min=0.05, max=1.0, step=0.05)
        self.top_p.description = "top_p"
        self.rep = W.FloatSlider(
            value=sp.repetition_penalty, min=1.0, max=1.5, step=0.01, description="rep. penalty"
        )
        for w in (self.temperature, self.top_k, self.top_p, self.rep):
            w.style = STYLE
        self.generate_button = W.Button(description="Generate", button_style="primary")
        self.stop_button = W.Button(description="Stop", button_style="warning", disabled=True)
        self.status = W.HTML()
        self.results = W.VBox()
        self.history: list[str] = []  # result HTML, newest first
        self.worker: threading.Thread | None = None
        self.stop_event = threading.Event()

        self.prompt.observe(self._on_prompt, names="value")
        self.text.observe(self._on_text, names="value")
        self.generate_button.on_click(self.generate)
        self.stop_button.on_click(self.stop)
        own = [W.HBox([self.ref_path]), self.ref_text] if s.set_name == "icl" else []
        note = W.HTML(
            "<small>Sampling sliders set codebook 0; codebooks 1-15 keep the set's "
            "<code>subtalker_*</code> settings. Stop, or Kernel &gt; Interrupt, ends a run "
            "within a frame or two.</small>"
        )
        controls = [
            self.voice,
            *own,
            self.prompt,
            self.text,
            W.HBox([self.seed, self.max_new]),
            W.HBox([self.temperature, self.top_k]),
            W.HBox([self.top_p, self.rep]),
            note,
            W.HBox([self.generate_button, self.stop_button]),
        ]
        self.widget = W.VBox([W.VBox(controls), self.status, self.results])

    # ---- the text: one box, filled by the prompt menu ------------------------------------
    def _on_prompt(self, change) -> None:
        if change["new"]:  # a prompt: it becomes the text
            self.text.value = self.prompts[change["new"] - 1]
        elif self.text.value.strip() in self.prompts:  # "(own text)" picked: an empty box
            self.text.value = ""

    def _on_text(self, change) -> None:
        typed = change["new"].strip()
        k = next((k for k, p in enumerate(self.prompts, start=1) if p == typed), 0)
        self.prompt.value = k  # the menu shows the prompt the box holds, or "(own text)"

    # ---- a run ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def choice(self) -> Choice:
        """What Generate would run now; a ValueError says what to fix."""
        text = self.text.value.strip()
        if not text:
            raise ValueError("Type a text first (or pick a prompt).")
        if (problem := check_seed(self.seed.value)) is not None:
            raise ValueError(problem)
        voice, ref_text = self.voice.value, None
        if voice == OWN_RECORDING:
            voice, ref_text = self.ref_path.value.strip(), self.ref_text.value
            if not voice:
                raise ValueError("Give the path of your recording (or pick a set recording).")
        sampling = {
            "max_new_tokens": self.max_new.value,
            "temperature": self.temperature.value,
            "top_k": self.top_k.value,
            "top_p": self.top_p.value,
            "repetition_penalty": self.rep.value,
        }
        return Choice(voice, text, self.seed.value, sampling, ref_text)

    def generate(self, _=None) -> None:
        """The Generate button: start a run in a thread (ignored while one runs)."""
        if self.running or self.generate_button.disabled:
            log.info("a run is in flight; Generate ignored")
            return
        self.generate_button.disabled = True  # first, before anything can fail
        try:
            choice = self.choice()
        except ValueError as exc:
            self.status.value = f"<b>{html.escape(str(exc))}</b>"
            self.generate_button.disabled = False
            return
        self.stop_event = threading.Event()
        interrupt = InterruptStops(self.stop_event)
        interrupt.arm()
        self.stop_button.disabled = False
        self.status.value = f"generating: <i>{html.escape(choice.text[:80])}</i> ..."
        self.worker = threading.Thread(
            target=self._work, args=(choice, interrupt), name="listen-panel", daemon=True
        )
        self.worker.start()

    def stop(self, _=None) -> None:
        """The Stop button: the run ends within a block of frames."""
        if self.running:
            self.stop_event.set()
            self.status.value = "stopping ..."

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run in flight (if any) has ended (tests; scripts)."""
        if self.worker is not None:
            self.worker.join(timeout)

    def _work(self, choice: Choice, interrupt: InterruptStops) -> None:
        try:
            outcome = generate_once(
                self.run,
                choice.voice,
                choice.text,
                choice.seed,
                ref_text=choice.ref_text,
                stop=self.stop_event,
                **choice.sampling,
            )
            entry = result_html(choice, outcome, self.run.settings.set_name)
        except GenerationStopped as exc:
            self.status.value = f"stopped after {frames_text(exc.frames)}"
        except Exception as exc:  # show it in the panel, keep the kernel usable
            log.debug("panel run failed", exc_info=True)
            self.status.value = f"<b>failed:</b> {html.escape(f'{type(exc).__name__}: {exc}')}"
        else:
            self.history = [entry, *self.history][:HISTORY]
            self.results.children = [_html(h) for h in self.history]
            self.status.value = ""
        finally:
            interrupt.disarm()
            self.stop_button.disabled = True
            self.generate_button.disabled = False


def _html(value: str):
    import ipywidgets as W

    return W.HTML(value)


def build_panel(run: SetRun) -> ListeningPanel:
    """The panel for a generated set (display `panel.widget`)."""
    return ListeningPanel(run)


def show_panel(run: SetRun) -> ListeningPanel | None:
    """Display the panel when the settings ask for it; return it (or None)."""
    if not run.settings.interactive or run.engine is None:
        return None
    try:
        panel = build_panel(run)
    except ImportError:
        log.warning("ipywidgets is not installed: pip install ipywidgets for the live panel")
        return None
    from IPython.display import display

    display(panel.widget)
    return panel


__all__ = ["ListeningPanel", "build_panel", "generate_once", "players_from_arrays", "show_panel"]
