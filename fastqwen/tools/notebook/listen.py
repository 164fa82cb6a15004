"""The live listening panel of the parity notebooks (ipywidgets).

Pick a speaker or reference, one of the prompts or your own text, the seed and the main
sampling settings, press Generate, and hear the static engine and the `qwen_tts` reference
side by side with their timing. It reuses the set's loaded model and the same library calls
as the batch run (`samplesets.run.make_request`, `samplesets.run.run_pair`); nothing is
written to disk. The sliders set codebook 0 (the talker), as the parameters of the same
names do; the code predictor keeps the set's `subtalker_*` settings.

The panel is shown only when `settings.interactive` is true, which `make report` and the
notebook tests turn off. Displaying it never waits for input, so even a batch run that
leaves it on does not block.
"""

from __future__ import annotations

import html
import logging

from fastqwen.tools.notebook.views import SIDE_LABELS, timing_table
from fastqwen.tools.samplesets.run import PairOutcome, SetRun, make_request, run_pair
from fastqwen.tools.samplesets.settings import rel

log = logging.getLogger(__name__)
OWN_TEXT = "(own text below)"


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


def generate_once(run: SetRun, voice: str, text: str, seed: int, **sampling) -> PairOutcome:
    """One static + dynamic generation with the set's model (no teacher forcing, no files)."""
    params = run.settings.sampling_params(**sampling)
    request = make_request(run.settings, voice, text, run.references)
    outcome = PairOutcome(run.settings.set_name, voice, 0, text)
    outcome.report, outcome.stream = run_pair(
        run.engine, request, params, seed, teacher_forcing=False
    )
    return outcome


def build_panel(run: SetRun):
    """The ipywidgets panel (a VBox) for a generated set."""
    import ipywidgets as W
    from IPython.display import HTML, display

    s, sp = run.settings, run.settings.sampling
    voice_options = [(rel(v) if s.set_name == "icl" else v, v) for v in s.voices]
    voice = W.Dropdown(options=voice_options, description="voice")
    prompts = [(f"{k}: {p[:60]}...", p) for k, p in enumerate(s.prompts, start=1)]
    prompt = W.Dropdown(options=prompts + [(OWN_TEXT, None)], description="prompt")
    own = W.Textarea(
        placeholder="your text (choose 'own text' above)", layout=W.Layout(width="90%")
    )
    seed = W.IntText(value=s.seed, description="seed")
    max_new = W.IntSlider(
        value=min(sp.max_new_tokens, 256),
        min=2,
        max=max(512, sp.max_new_tokens),
        description="max tokens",
    )
    temperature = W.FloatSlider(
        value=sp.temperature, min=0.05, max=1.5, step=0.05, description="temperature"
    )
    top_k = W.IntSlider(value=sp.top_k, min=0, max=200, description="top_k")
    top_p = W.FloatSlider(value=sp.top_p, min=0.05, max=1.0, step=0.05, description="top_p")
    rep = W.FloatSlider(
        value=sp.repetition_penalty, min=1.0, max=1.5, step=0.01, description="rep. penalty"
    )
    note = W.HTML(
        "<small>Sampling sliders set codebook 0; codebooks 1-15 keep the set's "
        "<code>subtalker_*</code> settings.</small>"
    )
    button = W.Button(description="Generate", button_style="primary")
    out = W.Output()

    def on_click(_) -> None:
        text = prompt.value if prompt.value is not None else own.value.strip()
        button.disabled = True
        with out:
            out.clear_output()
            if not text:
                display(HTML("<b>Type a text first.</b>"))
                button.disabled = False
                return
            display(HTML(f"generating: <i>{html.escape(text[:80])}</i> ..."))
            try:
                outcome = generate_once(
                    run,
                    voice.value,
                    text,
                    seed.value,
                    max_new_tokens=max_new.value,
                    temperature=temperature.value,
                    top_k=top_k.value,
                    top_p=top_p.value,
                    repetition_penalty=rep.value,
                )
            except Exception as exc:  # show it in the panel, keep the kernel usable
                out.clear_output()
                display(HTML(f"<b>failed:</b> {html.escape(f'{type(exc).__name__}: {exc}')}"))
            else:
                out.clear_output()
                same = outcome.report.codes.describe()
                display(
                    HTML(players_from_arrays(outcome.report)),
                    timing_table(outcome),
                    HTML(f"codes: {html.escape(same)}"),
                )
            finally:
                button.disabled = False

    button.on_click(on_click)
    controls = W.VBox(
        [
            voice,
            prompt,
            own,
            W.HBox([seed, max_new]),
            W.HBox([temperature, top_k]),
            W.HBox([top_p, rep]),
            note,
            button,
        ]
    )
    return W.VBox([controls, out])


def show_panel(run: SetRun):
    """Display the panel when the settings ask for it; return it (or None)."""
    if not run.settings.interactive or run.engine is None:
        return None
    try:
        panel = build_panel(run)
    except ImportError:
        log.warning("ipywidgets is not installed: pip install ipywidgets for the live panel")
        return None
    from IPython.display import display

    display(panel)
    return panel


__all__ = ["build_panel", "generate_once", "players_from_arrays", "show_panel"]
