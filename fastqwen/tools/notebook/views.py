"""What the parity notebooks show: banner, audio players, timing, parity and summary tables.

Builders return HTML strings, pandas DataFrames or PNG bytes, so they are tested without a
kernel; the `show_*` functions display them. Audio players embed the WAV files' own bytes
as base64 data URIs: the report plays exactly the samples on disk, never rescaled (what
`IPython.display.Audio(..., normalize=False)` does for arrays), and works offline. Each
player carries `data-wav="<file name>"` (or `data-ref=` for reference recordings), so a
test can match players to files.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from fastqwen.tools.notebook import display, plots
from fastqwen.tools.notebook.display import BOX_STYLE as _BOX
from fastqwen.tools.notebook.display import banner_html
from fastqwen.tools.samplesets.run import PairOutcome, SetRun, banner_text
from fastqwen.tools.samplesets.settings import SetSettings, rel

SIDE_LABELS = {"static": "static (fastqwen engine)", "dynamic": "dynamic (qwen-tts reference)"}


def audio_tag(path: Path, *, attr: str = "data-wav") -> str:
    """An `<audio>` player holding the file's bytes; `attr` names the file for tests."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<audio controls preload="metadata" {attr}="{html.escape(Path(path).name)}" '
        f'src="data:audio/wav;base64,{data}"></audio>'
    )


def _eos_text(result) -> str:
    return "EOS" if result.eos_reached else "cut at max_new_tokens"


def players_html(outcome: PairOutcome) -> str:
    """Static and dynamic players side by side, with file name, length and EOS."""
    heads, cells, notes = [], [], []
    for side in ("static", "dynamic"):
        result = getattr(outcome.report, side)
        heads.append(f"<th>{SIDE_LABELS[side]}</th>")
        cells.append(f"<td>{audio_tag(outcome.files[side])}</td>")
        notes.append(
            f"<td><code>{outcome.files[side].name}</code> &middot; "
            f"{result.audio_seconds:.2f} s &middot; {_eos_text(result)}</td>"
        )
    rows = "".join(f"<tr>{''.join(r)}</tr>" for r in (heads, cells, notes))
    return f'<table class="fq-players">{rows}</table>'


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def timing_table(outcome: PairOutcome):
    """DataFrame, one row per side: frames, audio, wall and generation time, speed, TTFA."""
    import pandas as pd

    rows = {}
    for side in ("static", "dynamic"):
        r = getattr(outcome.report, side)
        ttfa = outcome.stream.ttfa_s * 1000 if side == "static" and outcome.stream else None
        rows[SIDE_LABELS[side]] = {
            "frames": r.frames,
            "audio s": _num(r.audio_seconds),
            "wall s": _num(r.wall_s, 3),
            "generate s": _num(r.generate_s, 3),
            "ms/frame": _num(r.ms_per_frame, 1),
            "RTF (audio s per s)": _num(r.rtf, 2),
            "prefill ms": _num(None if r.prefill_s is None else r.prefill_s * 1000, 1),
            "time to first audio ms (streaming)": _num(ttfa, 1),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _pair(a: float, b: float) -> str:
    return f"{_sci(a)} / {_sci(b)}"


def _yes_cut(side: dict) -> str:
    return "yes" if side["eos_reached"] else "cut"


def parity_table(outcome: PairOutcome):
    """DataFrame of measures: EOS per side, duration difference, divergence, teacher-forced KL."""
    import pandas as pd

    rep, codes = outcome.report, outcome.report.codes
    first = codes.first_divergent_frame
    duration_diff = rep.static.audio_seconds - rep.dynamic.audio_seconds
    rows = {
        "static: end": f"{_eos_text(rep.static)} ({rep.static.frames} frames)",
        "dynamic: end": f"{_eos_text(rep.dynamic)} ({rep.dynamic.frames} frames)",
        "duration static - dynamic (s)": f"{duration_diff:+.3f}",
        "first divergent frame": "none (identical codes)"
        if first is None
        else (f"{first} (codebook {codes.first_divergent_codebook})"),
        "codes equal (common frames)": f"{100 * codes.equal_fraction:.1f}%",
    }
    if rep.forced is not None:
        tf = rep.forced.summary()
        rows.update(
            {
                "teacher-forced KL cb0: mean / max": _pair(tf["cb0_kl_mean"], tf["cb0_kl_max"]),
                "teacher-forced KL cb1-15: mean / max": _pair(tf["sub_kl_mean"], tf["sub_kl_max"]),
                "max |logit difference|": _sci(tf["max_abs_logit_diff"]),
                "argmax agreement cb0 / cb1-15": (
                    f"{100 * tf['cb0_argmax_agree']:.1f}% / {100 * tf['sub_argmax_agree']:.1f}%"
                ),
            }
        )
    if outcome.stream is not None:
        stream = outcome.stream.parity
        rows["streaming vs non-streaming audio: max |diff|"] = _sci(stream.max_abs_diff)
        rows["bound: 2 x the codec's own rounding on these codes"] = _sci(stream.bound)
        rows["streaming within the bound"] = "yes" if stream.within_bound else "NO"
    return pd.DataFrame({"value": rows})


def summary_table(run: SetRun):
    """DataFrame, one row per pair, from the summary.json rows."""
    import pandas as pd

    records = []
    for row in run.section["rows"]:
        rec = {"pair": row["pair"], "status": row["status"]}
        if row["status"] == "ok":
            s, d, c = row["static"], row["dynamic"], row["codes"]
            tf = row.get("teacher_forced", {})
            first = c["first_divergent_frame"]
            rec.update(
                {
                    "frames s/d": f"{s['frames']}/{d['frames']}",
                    "EOS s/d": f"{_yes_cut(s)}/{_yes_cut(d)}",
                    "duration diff s": row["duration_diff_s"],
                    "first divergent frame": "identical" if first is None else first,
                    "codes equal %": round(100 * c["equal_fraction"], 1),
                    "KL cb0 mean": _sci(tf.get("cb0_kl_mean")),
                    "KL cb0 max": _sci(tf.get("cb0_kl_max")),
                    "ms/frame s/d": f"{s['ms_per_frame']:.1f}/{d['ms_per_frame']:.1f}",
                    "RTF s/d": f"{s['rtf']:.2f}/{d['rtf']:.2f}",
                    "TTFA ms": s.get("ttfa_ms"),
                }
            )
        else:
            rec["error"] = row["error"]
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("pair").fillna("")


def settings_table(settings: SetSettings):
    """DataFrame: each setting, its value and where it came from."""
    import pandas as pd

    values = settings.to_json()
    values.pop("set")
    values["prompts"] = f"{len(settings.prompts)}, listed below"  # a list reads better than " | "
    values["voices"] = ", ".join(values["voices"])
    origin = dict(settings.origins)
    return pd.DataFrame(
        {
            "value": values,
            "from": {
                k: origin.get(k, origin.get("speakers" if k == "voices" else k, "default"))
                for k in values
            },
        }
    )


def left_aligned(df):
    """A table styled with labels and values left-aligned next to each other (notebook HTML
    right-aligns cells, which put values far from their labels)."""
    left = [("text-align", "left")]
    return df.style.set_properties(**{"text-align": "left"}).set_table_styles(
        [{"selector": "th", "props": left}, {"selector": "td", "props": left}]
    )


def prompts_markdown(settings: SetSettings) -> str:
    """The prompts as a numbered list (`gen<k>` in the file names is prompt k)."""
    items = "\n".join(f"{k}. {p}" for k, p in enumerate(settings.prompts, start=1))
    return f"**Prompts** (`gen<k>` in the file names is prompt k):\n\n{items}"


def references_html(run: SetRun) -> str:
    """ICL references: player, text used, where it came from, the ASR check, warnings."""
    rows = [
        "<tr><th>recording</th><th>player</th><th>text used</th><th>source</th>"
        "<th>ASR transcript (check)</th></tr>"
    ]
    for ref in run.references:
        check = "" if ref.transcript in (None, ref.text) else ref.transcript
        if ref.word_error_rate is not None:
            check += f" ({100 * ref.word_error_rate:.1f}% word error against ref_texts.json)"
        warn = "".join(
            f'<div style="color:#c0392b"><b>warning:</b> {html.escape(w)}</div>'
            for w in ref.warnings
        )
        rows.append(
            f"<tr><td><code>{html.escape(rel(ref.path))}</code>{warn}</td>"
            f"<td>{audio_tag(ref.path, attr='data-ref')}</td>"
            f"<td>{html.escape(ref.text)}</td><td>{html.escape(ref.text_source)}</td>"
            f"<td>{html.escape(check.strip())}</td></tr>"
        )
    return f'<table class="fq-refs">{"".join(rows)}</table>'


def error_html(outcome: PairOutcome) -> str:
    style = _BOX.format(c="#c0392b", b="#fdecea")
    detail = html.escape(outcome.traceback or "")
    return (
        f'<div class="fq-error" style="{style}"><b>{html.escape(outcome.pair)} failed:</b> '
        f"{html.escape(outcome.error or '')}<details><summary>traceback</summary>"
        f"<pre>{detail}</pre></details></div>"
    )


# ------------------------------------------------------------------ display


def show_header(settings: SetSettings, source) -> None:
    """The banner (random weights) and the settings table, at the top of a notebook."""
    from IPython.display import HTML, Markdown

    banner = banner_text(source, settings.device)
    if banner:
        display.show(HTML(banner_html(banner)))
    display.show(
        Markdown(
            "**Settings** (*from*: a papermill parameter, an environment variable, or the default)"
        ),
        left_aligned(settings_table(settings)),
        Markdown(prompts_markdown(settings)),
    )


def show_run(run: SetRun) -> None:
    """One line on what was written, plus the ICL references table."""
    from IPython.display import HTML, Markdown

    ok = sum(o.ok for o in run.outcomes)
    info = run.section["run"]
    where = rel(run.files_dir or run.output_dir)
    if run.complete:
        outcome = f"into `{where}`"
    else:
        outcome = (
            f"; **the set was not published**: `{rel(run.output_dir)}` keeps the earlier set, "
            f"and this run's files are in `{where}`"
        )
    display.show(
        Markdown(
            f"Generated **{ok} of {len(run.outcomes)}** pairs in {info['wall_s']} s {outcome} "
            f"(torch threads: {run.threads}; {info['warm_up']}). Files are listed in "
            f"`{where}/README.md`."
        )
    )
    if run.references:
        display.show(HTML(references_html(run)))


def show_pair(outcome: PairOutcome) -> None:
    """Heading, players, timing and parity tables, audio and divergence plots of one pair."""
    from IPython.display import HTML, Markdown

    voice = rel(outcome.voice) if outcome.set_name == "icl" else outcome.voice
    display.show(
        Markdown(f"### {outcome.pair}\n\nVoice `{voice}`, prompt {outcome.k}: *{outcome.prompt}*")
    )
    if not outcome.ok:
        display.show(HTML(error_html(outcome)))
        return
    rep = outcome.report
    display.show(
        HTML(players_html(outcome)),
        Markdown("**Timing**"),
        timing_table(outcome),
        Markdown("**Parity**"),
        parity_table(outcome),
    )
    display.show_png(
        plots.audio_figure(
            rep.static.audio,
            rep.dynamic.audio,
            rep.static.sample_rate,
            f"{outcome.pair}: static (top) and dynamic (bottom)",
        )
    )
    if rep.forced is not None:
        display.show_png(
            plots.divergence_figure(
                rep.forced.cb0_kl,
                rep.forced.sub_kl,
                rep.codes.first_divergent_frame,
                f"{outcome.pair}: teacher-forced KL(reference || static) per frame",
            )
        )


def show_summary(run: SetRun) -> None:
    """The closing table (also in summary.json)."""
    from IPython.display import Markdown

    where = (
        f"`{rel(run.files_dir or run.output_dir)}/summary.json` (section `{run.settings.set_name}`)"
    )
    display.show(summary_table(run), Markdown(f"Also written to {where}."))


__all__ = [
    "audio_tag",
    "banner_html",
    "left_aligned",
    "parity_table",
    "players_html",
    "prompts_markdown",
    "references_html",
    "settings_table",
    "show_header",
    "show_pair",
    "show_run",
    "show_summary",
    "summary_table",
    "timing_table",
]
