"""`samples/parity/README.md`, rendered from `summary.json` so it always matches the files.

It documents both sets (CustomVoice and ICL): models, language, voices, generation settings,
seed, prompts, the files of each set, how the reference texts were obtained, and how to
regenerate everything with commands and environment variables.
"""

from __future__ import annotations

from fastqwen.tools.samplesets.settings import NOTEBOOKS, SAMPLING_FIELDS, SETS, env_var_table

TITLES = {"customvoice": "CustomVoice set", "icl": "ICL (voice clone) set"}
SETTING_KEYS = (*SAMPLING_FIELDS, "seed", "max_seq_len", "device", "dtype")


def _md(text: object) -> str:
    """A table-safe cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _model_line(model: dict) -> str:
    line = f"`{model['requested']}`"
    if model["requested"] != model["resolved"]:
        line += f" → `{model['resolved']}`"
    if model["is_random"]:
        line += " (**random weights**)"
    return line


def _origin(section: dict, key: str) -> str:
    origin = section.get("origins", {}).get(key, "default")
    return (
        ""
        if origin == "default"
        else f" (from {'parameter' if origin == 'parameter' else f'`{origin}`'})"
    )


def _set_section(name: str, section: dict) -> list[str]:
    s, model, run = section["settings"], section["model"], section["run"]
    out = [f"## {TITLES[name]}", ""]
    if model.get("banner"):
        out += [f"> **{model['banner']}**", ""]
    out += [
        f"Notebook `notebooks/{NOTEBOOKS[name]}`; generated {run['started']}"
        f" from commit `{run.get('git_commit') or 'unknown'}` in {run['wall_s']} s"
        f" (torch {run['torch']}, qwen-tts {run.get('qwen_tts')}, "
        f"{run['torch_threads']} torch thread(s)).",
        "",
        "| | |",
        "|---|---|",
        f"| model | {_model_line(model)}{_origin(section, 'model')} |",
        f"| language | {s['language']} |",
    ]
    if name == "customvoice":
        out.append(f"| speakers | {', '.join(s['voices'])}{_origin(section, 'voices')} |")
    else:
        out.append(f"| reference recordings | {', '.join(f'`{v}`' for v in s['voices'])} |")
    for key in SETTING_KEYS:
        if key in s:  # a section written before a field existed lacks it
            value = "engine default" if s[key] is None else s[key]  # max_seq_len unset
            out.append(f"| {key} | {value}{_origin(section, key)} |")
    out += ["", "Prompts (`gen<k>` in the file names is prompt k):", ""]
    out += [f"{k}. {p}" for k, p in enumerate(s["prompts"], start=1)]
    out.append("")
    if name == "icl":
        out += _references(section)
    out += _files(section)
    return out


def _references(section: dict) -> list[str]:
    out = ["Reference texts (also in `icl_transcripts.txt`):", ""]
    out += [
        "| recording | text used | how it was obtained | ASR transcript (check) | warnings |",
        "|---|---|---|---|---|",
    ]
    for ref in section["references"]:
        heard = ref.get("transcript")
        check = "" if heard is None or heard == ref["text"] else _md(heard)
        if ref.get("word_error_rate") is not None:
            check += f" ({100 * ref['word_error_rate']:.1f}% word error against `ref_texts.json`)"
        warnings = "; ".join(ref.get("warnings") or [])
        out.append(
            f"| `{ref['file']}` | {_md(ref['text'])} | {_md(ref['text_source'])} "
            f"| {check.strip()} | {_md(warnings)} |"
        )
    out += [
        "",
        "The text used is the one given (`ref_texts`, `PARITY_REF_TEXT*`), else the recording's "
        "known text from `ref_texts.json` beside it, else an offline transcript. A known text "
        "keeps the prompt, and so every code, the same on every machine; the transcript is "
        "then only a check.",
    ]
    if section.get("transcription"):
        out += [
            "",
            f"Transcribed offline with {section['transcription']} (`fastqwen.tools.transcribe`).",
        ]
    return out + [""]


def _files(section: dict) -> list[str]:
    out = [
        "Files (`_static`: fastqwen's static-cache engine; `_dynamic`: the qwen-tts reference; "
        "same request and seed):",
        "",
        "| file | voice | prompt | frames | EOS | seconds | first divergent frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        if row["status"] != "ok":
            out.append(
                f"| *{row['pair']}: failed* | {row['voice']} | {row['prompt_index']} "
                f"| | | | {_md(row['error'])} |"
            )
            continue
        first = row["codes"]["first_divergent_frame"]
        for side in ("static", "dynamic"):
            r = row[side]
            eos = "EOS" if r["eos_reached"] else "cut at max_new_tokens"
            out.append(
                f"| `{row['files'][side]}` | {row['voice']} | {row['prompt_index']} "
                f"| {r['frames']} | {eos} | {r['audio_s']} | "
                f"{'identical codes' if first is None else first} |"
            )
    return out + [""]


def _regenerate() -> list[str]:
    env_rows: dict[str, tuple[str, str]] = {}
    for name in SETS:
        for var, param, meaning in env_var_table(name):
            env_rows.setdefault(var, (param, meaning))
    out = [
        "## Regenerating",
        "",
        "```bash",
        "make report        # both notebooks -> this folder and reports/*.html (random weights",
        "                   # on a machine without the real checkpoints or a GPU)",
        "QWEN_TTS_CUSTOM_MODEL=Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice \\",
        "QWEN_TTS_MODEL=Qwen/Qwen3-TTS-12Hz-1.7B-Base make report    # the real models",
        "PARITY_SPEAKERS=aiden PARITY_MAX_NEW_TOKENS=64 make report   # a smaller set",
        ".venv/bin/papermill notebooks/customvoice_parity.ipynb /tmp/cv.ipynb \\",
        "    -p speakers aiden -p temperature 0.7 -p subtalker_temperature 0.7",
        ".venv/bin/papermill notebooks/icl_parity.ipynb /tmp/icl.ipynb \\",
        "    -y 'ref_texts: [\"first text\", null, null]'",
        "```",
        "",
        "Each setting comes from the notebook parameter when it is given (`papermill -p`), "
        "else from its environment variable when set and non-empty, else the default above. "
        "`.venv/bin/papermill --help-notebook notebooks/<name>.ipynb` lists the parameters. "
        "The generation parameters are the fields of `fastqwen.SamplingParams`: `temperature`, "
        "`top_k`, `top_p`, `do_sample` and `repetition_penalty` act on codebook 0, the "
        "`subtalker_*` ones on codebooks 1-15 (the code predictor).",
        "",
        "| variable | parameter | meaning |",
        "|---|---|---|",
    ]
    out += [
        f"| `{var}` | `{param}` | {_md(meaning)} |" for var, (param, meaning) in env_rows.items()
    ]
    return out + [""]


def render_readme(summary: dict) -> str:
    """The README for a `summary.json` (as read by `artifacts.read_summary`)."""
    sets = summary.get("sets", {})
    out = [
        "# Parity sample set",
        "",
        "<!-- Generated by fastqwen.tools.samplesets.readme from summary.json; do not edit. -->",
        "",
        "Every pair of WAVs is one request generated twice with the same seed: by fastqwen's "
        "static-cache engine (`_static`) and by the official `qwen-tts` 0.1.1 generation with "
        "its dynamic cache (`_dynamic`). 24 kHz mono 16-bit PCM. `summary.json` holds the "
        "timings and parity numbers of every pair (codes, EOS, teacher-forced KL); the HTML "
        "reports under `reports/` show them with players and plots.",
        "",
    ]
    for name in SETS:
        if name in sets:
            out += _set_section(name, sets[name])
        else:
            out += [
                f"## {TITLES[name]}",
                "",
                f"Not generated yet: run `make report` or `notebooks/{NOTEBOOKS[name]}`.",
                "",
            ]
    out += _regenerate()
    return "\n".join(out)


__all__ = ["render_readme"]
