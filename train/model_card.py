"""The `README.md` model card every export writes beside the weights (the Hub renders it).

It says what a user of the directory needs without opening the code: the class and how to load it, the
architecture, the latent normalisation and where pipelines read it, fp16 safety, what it was trained on,
and its last evaluation with the command that measures it again. Everything comes from files already in
the export (`config.json`, `latent_stats.json`) and, for a training run, its `config.yaml` and
`metrics.jsonl`; nothing is guessed: what is unknown is left out. Held-out results (`aetk export --eval`,
checked to be these weights' own) add their protocol card and the command that repeats them exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tokenizers_ae.precision import PLAN_KEY
from tokenizers_ae.pretrained import NATIVE_CONFIG, LoadError, locate

ARCH_KEYS = ("block_out_channels", "layers_per_block", "latent_channels", "base_dim", "dim_mult", "z_dim",
             "temperal_downsample", "num_res_blocks", "codebook_size", "num_vq_embeddings", "vq_embed_dim",
             "sampling_rate", "num_filters", "upsampling_ratios", "codebook_dim",
             # aetk's native format (aetk_model.json): the codec, FSQ/LFQ tokenizers
             "sample_rate", "ratios", "stage_channels", "dimension", "lstm_layers", "num_quantizers")
PLACES = ("config.json", NATIVE_CONFIG, "prior.json")
"""Files that make a directory an export, which gets a card."""
NORM_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


def _loading(config: dict, out: Path) -> tuple[str, str]:
    """(library, a snippet that loads the directory) from what its config.json says it is."""
    if "_class_name" in config:
        cls = config["_class_name"]
        return "diffusers", f"from diffusers import {cls}\n\nmodel = {cls}.from_pretrained(\"{out.name}\")"
    if config.get("architectures"):
        cls = config["architectures"][0]
        return "transformers", f"from transformers import {cls}\n\nmodel = {cls}.from_pretrained(\"{out.name}\")"
    return "aetk", f"import aetk\n\nmodel = aetk.load(\"{out.name}\")"


def _last_eval(run_dir: Path) -> dict:
    """The last `eval/...` line of a run's metrics.jsonl ({} when there is none)."""
    path = run_dir / "metrics.jsonl"
    last: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if any(k.startswith("eval/") for k in row):
                last = row
    return last


def _fmt(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _validation_table(metrics: dict[str, float]) -> list[str]:
    """Markdown table of a run's last validation: one row per metric, or, for a codec's `name@R` keys,
    one row per bitrate R (its plain keys repeat the highest bitrate's and are left out)."""
    rated = {k: v for k, v in metrics.items() if "@" in k}
    if not rated:
        return ["| metric | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    names = list(dict.fromkeys(k.split("@", 1)[0] for k in rated))
    rates = list(dict.fromkeys(k.split("@", 1)[1] for k in rated))
    lines = ["| bitrate | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {r} | " + " | ".join(_fmt(rated[f"{n}@{r}"]) if f"{n}@{r}" in rated else "-" for n in names) + " |"
              for r in rates]
    other = {k: v for k, v in metrics.items() if "@" not in k and k not in names}
    return lines + ([""] + [f"- {k}: {_fmt(v)}" for k, v in other.items()] if other else [])


def _metrics_table(result: dict) -> list[str]:
    """Markdown table of an eval result: per bitrate (audio: the codec, then Opus on the same clips),
    else per metric with the model beside its baselines (images, video)."""
    if "codec" in result:  # audio: one row per bitrate
        opus = result.get("opus") or {}
        rows = [(f"codec {r['kbps']:g} kbps", r) for r in result["codec"]]
        rows += [(f"Opus {r['kbps']:g} kbps", r) for r in opus.get("results", [])]
        cols = [c for c in ("achieved_kbps", "si_snr", "mel_distance", "stft_distance", "pesq", "stoi")
                if any(c in r for _, r in rows)]
        lines = ["| | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
        return lines + [f"| {name} | " + " | ".join(_fmt(r[c]) if c in r else "-" for c in cols) + " |"
                        for name, r in rows]
    columns = [(name, result[key]) for key, name in (("model", "this model"), ("jpeg", "JPEG"), ("pca", "PCA"))
               if isinstance(result.get(key), dict)]
    metrics = list(dict.fromkeys(k for _, col in columns for k in _numbers(col)))
    lines = ["| metric | " + " | ".join(name for name, _ in columns) + " |", "| --- |" + " --- |" * len(columns)]
    return lines + [f"| {m} | " + " | ".join(_fmt(col[m]) if m in _numbers(col) else "-" for _, col in columns)
                    + " |" for m in metrics]


def held_out_section(out: Path, name: str, result: dict, readable: bool) -> list[str]:
    """Card lines for one `aetk eval --json` result, copied beside the card as evaluations/NAME.json;
    `readable`: aetk can load `out` (else the repeat command names the model it was exported from)."""
    card, done = result["protocol"], result.get("evaluated") or {}
    data = card.get("data") or {}
    settings = {k: (f"{v[:16]}..." if k.endswith("sha256") else v) for k, v in (card.get("settings") or {}).items()
                if v not in (None, []) and not isinstance(v, dict) and k not in ("crop", "pca_fit")}
    metrics = result.get("model") if isinstance(result.get("model"), dict) else {}  # audio: the model's name
    missing = {k: v for k, v in metrics.items() if isinstance(v, str)}  # metric -> why it is missing
    libs = ", ".join(f"{k} {v}" for k, v in (card.get("libraries") or {}).items() if v)
    lines = [f"## Held-out evaluation: {name}", "",
             f"`aetk eval` of these weights (sha256 `{str(done.get('sha256', '?'))[:16]}...`) on {data.get('items')} "
             f"items of `{data.get('source')}` ({data.get('split')}), the evaluated {card.get('kind', '')} data's "
             f"sha256 `{str(data.get('sha256', '?'))[:16]}...`.", "",
             "Settings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in settings.items()) + ".", ""]
    lines += _metrics_table(result) + [""]
    if missing:
        lines += ["Not measured: " + "; ".join(f"{k} ({v})" for k, v in missing.items()) + ".", ""]
    model, note = ((out.name, "") if readable else  # a transformers export: aetk reads what it came from
                   (done.get("source", "SOURCE"), f" on the aetk model `{out.name}` was exported from"))
    lines += [f"Repeat it exactly{note} (aetk refuses if the data, their crops or the settings differ):", "",
              "```bash", f"aetk eval {model} --protocol {out.name}/evaluations/{name}.json", "```", ""]
    if libs:
        lines += [f"Metric code: {libs}.", ""]
    return lines


def model_card(out: Path, *, run_dir: Path | None = None, eval_command: str | None = None,
               evaluations: dict[str, dict] | None = None) -> str:
    """The card's text for the export at `out` (a directory `is_export` accepts); `evaluations`: name ->
    an `aetk eval --json` result of these weights (checked by the caller)."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    try:
        saved = locate(out)  # what aetk reads there (aetk's native format: its architecture)
    except LoadError:
        saved = None
    if not config and saved is not None and saved.source == "native":
        config = dict(saved.config or {})
    library, snippet = _loading(config, out)
    name = (config.get("_class_name") or (config.get("architectures") or [None])[0]
            or (saved.class_name if saved else "aetk model"))
    tag = "prior" if name.endswith("Prior") else "autoencoder"
    lines = ["---", f"library_name: {library}", "tags:", "- aetk", f"- {tag}", "---", "",
             f"# {out.name}: {name}", "", "Written by aetk at export.", "",
             "## Load it", "", "```python", snippet, "```", ""]
    arch = {k: config[k] for k in ARCH_KEYS if config.get(k) is not None}
    if arch:
        lines += ["## Architecture", ""] + [f"- `{k}`: {json.dumps(v)}" for k, v in arch.items()] + [""]
    norm = {k: config[k] for k in NORM_KEYS if config.get(k) is not None}
    if norm:
        lines += ["## Latent normalisation", "",
                  "Stored in `config.json`, where diffusers pipelines read it: "
                  "`(z - shift_factor) * scaling_factor`, or `(z - latents_mean) * scaling_factor / latents_std` "
                  "per channel when those are set.", ""]
        lines += [f"- `{k}`: {json.dumps(v)}" for k, v in norm.items()] + [""]
        stats = out / "latent_stats.json"
        if stats.is_file():
            s = json.loads(stats.read_text())
            where = f"items of `{s['data']}`" if s.get("data") else "training items"
            lines += [f"Measured on {s.get('n', '?')} {where} ({s.get('latent_norm', 'scale')}).", ""]
        else:
            how = " (`aetk export --data DIR` measures it)" if name == "AutoencoderKL" else ""
            lines += [f"Not measured by aetk for this export{how}.", ""]
    if "force_upcast" in config:
        safe = not config["force_upcast"]
        lines += ["## Precision", "",
                  "fp16-safe: the precision audit found no activation overflowing fp16." if safe else
                  "Not fp16-safe: `force_upcast` is set, so diffusers pipelines decode in fp32 (bf16 is fine).", ""]
        plan = (config.get(PLAN_KEY) or {}).get("fp16")
        if plan and not safe:
            kept = [*plan.get("encode", []), *plan.get("decode", [])]
            lines += [f"`aetk encode/eval --precision auto-fp16` (`auto` on a GPU) runs fp16 with only {len(kept)} "
                      f"module(s) in fp32: "
                      + ", ".join(f"`{k}`" for k in kept[:8]) + (" ..." if len(kept) > 8 else "") + ".", ""]
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
        data, train = recipe.get("data") or {}, recipe.get("train") or {}
        crop = (f"{data['segment_seconds']:g} s crops" if "segment_seconds" in data else
                f"{data['frames']}-frame clips at {data.get('resolution')} px" if "frames" in data else
                f"{data['resolution']} px" if "resolution" in data else "its own settings")
        lines += ["## Training", "", f"- data: `{data.get('path')}`, {crop}",
                  f"- steps: {train.get('max_steps')}, batch {train.get('batch_size')}, lr {train.get('lr')}"]
        if train.get("trainable", "all") != "all":
            lines.append(f"- trainable: {train['trainable']} (the other half is the original's, bit for bit)")
        if (recipe.get("model") or {}).get("init_from"):
            lines.append(f"- fine-tuned from `{recipe['model']['init_from']}`")
        lines.append("")
        last = _last_eval(run_dir)
        if last:
            lines += [f"## Evaluation (step {last.get('step')}, the run's validation batch)", ""]
            lines += _validation_table({k.removeprefix("eval/"): v for k, v in last.items()
                                        if k.startswith("eval/") and isinstance(v, float)}) + [""]
    if eval_command:
        lines += ["Measure it again on your data:", "", "```bash", eval_command, "```", ""]
    for name, result in (evaluations or {}).items():
        lines += held_out_section(out, name, result, readable=saved is not None)
    return "\n".join(lines)


def is_export(out: Path) -> bool:
    """Whether `out` is a directory export (diffusers, transformers, aetk's native format, a prior)."""
    return any((Path(out) / f).is_file() for f in PLACES)


def write_model_card(out: Path, **kw) -> Path:
    """Write `model_card(out, **kw)` to out/README.md."""
    path = Path(out) / "README.md"
    path.write_text(model_card(Path(out), **kw))
    return path
