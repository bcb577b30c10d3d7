"""Model bundles: the LLM, its text tokenizer and the modality tokenizers, loaded lazily.

A bundle is a folder with ``bundle.json``::

    {
      "format": "anygpt-bundle", "version": 1,
      "llm": "llm",                       # Hugging Face LLaMA folder (+ tokenizer files)
      "chat_template": "mmgpt",
      "max_context": 4096,
      "decoding": null,                   # folder of *_generate_config.json (default: config/)
      "modalities": {
        "speech": {"type": "speechtokenizer", "tokens": {...},
                   "files": {"config": "speechtokenizer/config.json",
                             "checkpoint": "speechtokenizer/ckpt.dev",
                             "soundstorm": "soundstorm/speechtokenizer_soundstorm_mls.pt"}},
        "music": {"type": "encodec", "tokens": {...}, "files": {"model": "encodec_32khz"},
                  "options": {"num_codebooks": 4}}
      }
    }

A plain Hugging Face model folder (AnyGPT's released ``models/anygpt/base`` or ``chat``) is a bundle
too: the modality files are then looked up where AnyGPT's command lines expect them (``models/...``
relative to the working directory), and each is loaded only when a request needs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from anygpt.checkpoint import CheckpointError
from anygpt.config import DecodingConfig, load_decoding
from anygpt.layout import ANYGPT_DEFINITIONS, ModalityTokens, TokenLayout, tokenizer_definition
from anygpt.memory import OffloadedModality, check_quantize, quantize_llm, quiet_torchao
from anygpt.modalities import registry
from anygpt.modalities.base import ModalityError, ModalityTokenizer
from anygpt.modalities.registry import ModalityEntry

__all__ = ["Bundle", "BundleConfig", "ModalityEntry", "upstream_layout"]
from anygpt.prompts import ChatTemplate, chat_template
from anygpt.text_tokenizer import TextTokenizer

BUNDLE_FILE = "bundle.json"
FORMAT = "anygpt-bundle"


@dataclass
class BundleConfig:
    """What a bundle holds; saved as ``bundle.json`` beside the weights."""

    llm: str = "llm"
    chat_template: str = "mmgpt"
    max_context: int = 4096
    decoding: str | None = None
    modalities: dict[str, ModalityEntry] = field(default_factory=dict)
    name: str = ""
    # how video inputs are sampled (:class:`anygpt.modalities.video.VideoOptions`); {}: defaults
    video: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = {k: v.to_dict() for k, v in self.modalities.items()}
        return {"format": FORMAT, "version": 1, **d}

    @classmethod
    def from_dict(cls, d: dict) -> BundleConfig:
        if d.get("format") != FORMAT:
            raise CheckpointError(f"not an anygpt bundle (format {d.get('format')!r})")
        mods = {k: ModalityEntry.from_dict(v) for k, v in d.get("modalities", {}).items()}
        return cls(
            d.get("llm", "llm"),
            d.get("chat_template", "mmgpt"),
            int(d.get("max_context", 4096)),
            d.get("decoding"),
            mods,
            d.get("name", ""),
            dict(d.get("video") or {}),
        )

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / BUNDLE_FILE
        path.write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )


def upstream_layout(llm_dir: Path, files: dict[str, dict[str, str]] | None = None) -> BundleConfig:
    """A bundle config for AnyGPT's released folder layout.

    Modality files default to where AnyGPT's command lines expect them (``tokenizers/*.json``,
    relative to the working directory); ``files`` overrides them per modality.
    """
    mods = {}
    for definition in ANYGPT_DEFINITIONS:
        d = tokenizer_definition(definition)
        paths = {**d["files"], **(files or {}).get(d["modality"], {})}
        opts = {**d.get("options", {}), "source": d.get("source")}
        mods[d["modality"]] = ModalityEntry(
            d["type"],
            ModalityTokens.from_dict(d["tokens"]),
            {k: str(Path(v).resolve()) for k, v in paths.items()},
            opts,
        )
    return BundleConfig(llm=str(llm_dir.resolve()), modalities=mods, name=llm_dir.name)


def llm_load_failure(llm_dir: Path, exc: Exception) -> str:
    """One line saying why the LLM folder did not load (missing weights, shapes that differ)."""
    weights = sorted(llm_dir.glob("*.safetensors")) + sorted(llm_dir.glob("*.bin"))
    if not weights:
        return (
            f"the LLM folder '{llm_dir}' has no weights (model.safetensors or pytorch_model.bin); "
            "copy the model's weight files there"
        )
    differ = []
    try:
        from safetensors import safe_open
        from transformers import AutoConfig, LlamaForCausalLM

        with torch.device("meta"):
            expected = LlamaForCausalLM(AutoConfig.from_pretrained(str(llm_dir))).state_dict()
        for f in weights:
            if f.suffix != ".safetensors":
                continue
            with safe_open(str(f), "pt") as handle:
                for key in handle.keys():
                    got = list(handle.get_slice(key).get_shape())
                    want = expected.get(key)
                    if want is not None and list(want.shape) != got:
                        differ.append(f"{key} is {got}, config.json wants {list(want.shape)}")
    except Exception:  # noqa: BLE001 - the comparison only adds detail to the message
        pass
    if differ:
        more = f" (+{len(differ) - 2} more)" if len(differ) > 2 else ""
        return (
            f"the weights in '{llm_dir}' do not fit its config.json: {'; '.join(differ[:2])}{more}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot load the LLM from '{llm_dir}': {first[:300]}"


class DeviceError(ValueError):
    """A ``--device`` that this machine or this build of torch cannot run on."""


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` -> a usable device, checked before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise DeviceError(
                f"--device {device}: this torch ({torch.__version__}) is a CPU build without "
                "CUDA; install a CUDA build of torch, or use --device cpu"
            )
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA devices "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {device}: not supported; use cpu, cuda, cuda:N or auto")
    return dev


class Bundle:
    """A loaded bundle.  Nothing heavy happens until a property is first used.

    Args:
        root: the bundle folder (or a plain LLM folder, see :func:`upstream_layout`).
        device: where models run (``cpu``, ``cuda``, ``cuda:1``; ``auto`` picks CUDA when present).
        dtype: LLM dtype (``auto``: bf16 on CUDA, fp32 on CPU).
        quantize: ``none``, or ``int8``: the LLM's linear layers (``lm_head`` included) get int8
            weight-only weights right after loading (needs torchao; see :mod:`anygpt.memory`).
        offload: a device (``cpu``) where the modality tokenizers' models wait while idle; they
            visit ``device`` only for an encode or decode.  ``None``: they stay on ``device``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: BundleConfig | None = None,
        quantize: str = "none",
        offload: str | None = None,
    ) -> None:
        self.root = Path(root)
        if config is None:
            config = self.read_config(self.root)
        self.config = config
        self.device = resolve_device(device)
        self.quantize = check_quantize(quantize)
        self.offload = resolve_device(offload) if offload else None
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self._tokenizer: TextTokenizer | None = None
        self._layout: TokenLayout | None = None
        self._llm: Any = None
        self._modalities: dict[str, ModalityTokenizer] = {}
        self._checked: set[str] = set()
        self._video: Any = None

    @staticmethod
    def read_config(root: Path) -> BundleConfig:
        if not root.exists():
            raise CheckpointError(
                f"model folder '{root}' does not exist. Create a test bundle with "
                f"'anygpt debug-bundle {root}', or download AnyGPT's released model there."
            )
        if (root / BUNDLE_FILE).is_file():
            try:
                return BundleConfig.from_dict(
                    json.loads((root / BUNDLE_FILE).read_text(encoding="utf-8"))
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{root / BUNDLE_FILE} is malformed: {exc}") from exc
        if (root / "config.json").is_file():
            return upstream_layout(root)
        raise CheckpointError(
            f"'{root}' is neither an anygpt bundle ({BUNDLE_FILE}) nor a model folder"
        )

    # ------------------------------------------------------------------ paths
    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    @property
    def llm_dir(self) -> Path:
        return self.path(self.config.llm)

    @property
    def decoding_dir(self) -> Path | None:
        return self.path(self.config.decoding) if self.config.decoding else None

    def decoding(self, output_modality: str | None, chat: bool) -> DecodingConfig:
        return load_decoding(output_modality, chat, self.decoding_dir)

    @property
    def template(self) -> ChatTemplate:
        return chat_template(self.config.chat_template)

    # ------------------------------------------------------------------ text side
    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_dir(self.llm_dir)
        return self._tokenizer

    @property
    def layout(self) -> TokenLayout:
        """Token layout of the modalities whose tokens the text tokenizer has."""
        if self._layout is None:
            tok = self.tokenizer
            present = [
                e.tokens
                for e in self.config.modalities.values()
                if tok.has_token(e.tokens.start_tag)
            ]
            self._layout = TokenLayout(present, tok)
        return self._layout

    @property
    def modality_names(self) -> list[str]:
        return list(self.layout.modalities)

    @property
    def input_modalities(self) -> list[str]:
        """What requests may give as input: the modalities, plus ``video`` where it can be read."""
        from anygpt.modalities.video import video_problem

        names = self.modality_names
        return names + ["video"] if video_problem(self) is None else names

    @property
    def video(self):
        """The :class:`~anygpt.modalities.video.VideoEncoder` of this bundle (built on first use)."""
        from anygpt.modalities.video import VideoEncoder, VideoOptions

        if self._video is None:
            self._video = VideoEncoder(self, VideoOptions.from_dict(self.config.video))
        return self._video

    @property
    def llm(self) -> Any:
        if self._llm is None:
            with quiet_torchao():  # transformers imports torchao, when installed, with its models
                from transformers import LlamaForCausalLM

            if not (self.llm_dir / "config.json").is_file():
                raise CheckpointError(f"LLM folder '{self.llm_dir}' has no config.json")
            try:
                with quiet_torchao():
                    model = LlamaForCausalLM.from_pretrained(
                        str(self.llm_dir), dtype=self.dtype, local_files_only=True
                    )
            except (OSError, RuntimeError, ValueError) as exc:
                raise CheckpointError(llm_load_failure(self.llm_dir, exc)) from exc
            rows = model.get_input_embeddings().weight.shape[0]
            if rows < self.tokenizer.vocab_size:
                raise CheckpointError(
                    f"the LLM has {rows} embedding rows but its tokenizer has {self.tokenizer.vocab_size} tokens"
                )
            if self.quantize == "int8":
                # layer by layer onto the device as each is quantized: a GPU never holds the
                # full-precision model
                quantize_llm(model, self.device)
            self._llm = model.to(self.device).eval()
        return self._llm

    # ------------------------------------------------------------------ modalities
    def modality(self, name: str, *, checked: bool = False) -> ModalityTokenizer:
        """The tokenizer of a modality (built on first use; its models load on first encode/decode).

        ``checked=True`` also verifies, once, that the tokenizer's codebooks fit the bundle's token
        definition (this may load the tokenizer's model, so callers ask for it just before use).
        """
        if name not in self._modalities:
            if name not in self.config.modalities:
                raise ModalityError(
                    f"this model has no '{name}' modality (it has: {', '.join(self.config.modalities) or 'none'})"
                )
            adapter = make_modality(name, self.config.modalities[name], self)
            if self.offload is not None:
                adapter = OffloadedModality(adapter, self.offload)
            self._modalities[name] = adapter
        adapter = self._modalities[name]
        if checked and name not in self._checked:
            registry.check_declared(adapter, self.config.modalities[name], name)
            self._checked.add(name)
        return adapter


def make_modality(name: str, entry: ModalityEntry, bundle: Bundle) -> ModalityTokenizer:
    """Instantiate the modality tokenizer for a bundle entry (no weights are read here)."""
    files = {k: bundle.path(v) for k, v in entry.files.items()}
    return registry.build(
        name, entry, files, device=bundle.device, decoding_dir=bundle.decoding_dir
    )
