"""The ``anygpt`` command line.

    anygpt base  [PROMPT ...] [--batch FILE]   base model: 'text|image|a cat', 'speech|text|q.wav', ...
    anygpt chat  [PROMPT ...] [--batch FILE]   chat model: 'interleaved|hello||||', plain text, '|clear'
    anygpt debug-bundle DIR                    write a tiny random bundle for tests

Run ``anygpt SUBCOMMAND --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SEED_LIMIT = 2**62  # seeds of later steps are derived by adding to it; torch takes < 2**64


class CommandError(ValueError):
    """A problem found before any work (an unusable output folder, a missing voice file)."""


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text[:40]}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text[:40]}'") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text[:40]}")
    return value


def guidance_value(text: str) -> float:
    """argparse type: a classifier-free guidance scale, above 0 and at most MAX_GUIDANCE."""
    from anygpt.config import MAX_GUIDANCE

    value = positive_float(text)
    if value > MAX_GUIDANCE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_GUIDANCE:g}, got {text[:40]}")
    return value


def seed_value(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to 2**62."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to 2**62, got '{text[:40]}'"
        ) from None
    if not 0 <= value <= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 2**62, got {text[:40]}")
    return value


def _common_model_args(p: argparse.ArgumentParser, default_out: str) -> None:
    from anygpt.paths import DEFAULT_MODEL_ENV

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "--model-name-or-path",
        dest="model",
        default=None,
        help=f"bundle folder, or an AnyGPT model folder (default: ${DEFAULT_MODEL_ENV}, "
        "else the shipped models/anygpt-nano)",
    )
    add_file_flags(g)
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="LLM precision (auto: bf16 on GPU, fp32 on CPU)",
    )
    add_memory_flags(g)
    r = p.add_argument_group("run")
    r.add_argument("prompts", nargs="*", help="one-shot prompts; none = interactive")
    r.add_argument("--batch", metavar="FILE", help="file with one prompt per line ('-' = stdin)")
    r.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="prompts generated together (default 16)",
    )
    r.add_argument(
        "--output-dir", default=default_out, help=f"where outputs go (default {default_out})"
    )
    r.add_argument("--seed", type=seed_value, default=None, help="make a run reproducible")
    r.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="override the decoding config's limit",
    )
    r.add_argument(
        "--max-seconds",
        type=positive_float,
        default=None,
        help="use only the first seconds of each audio input (inputs longer than the model's "
        "context takes are refused, naming the limit)",
    )
    r.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per request (request, text, files, notes, error) on stdout",
    )
    r.add_argument("-v", "--verbose", action="store_true", help="log loading and timing")


def add_memory_flags(group) -> None:
    """``--quantize`` and ``--offload-modalities``: the memory options of :class:`Bundle`."""
    from anygpt.memory import QUANTIZE_MODES

    group.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE_MODES,
        help="int8: int8 weight-only LLM linear layers (needs torchao; default none)",
    )
    group.add_argument(
        "--offload-modalities",
        action="store_const",
        const="cpu",
        default=None,
        dest="offload",
        help="keep the image/speech/music tokenizers' models on the CPU while idle; they move "
        "to --device only for an encode or decode",
    )


def bundle_options(args: argparse.Namespace) -> dict:
    """The Bundle keyword arguments that the model flags set."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "quantize": getattr(args, "quantize", "none"),
        "offload": getattr(args, "offload", None),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anygpt",
        description="Any-to-any multimodal LLMs from discrete tokens (AnyGPT-compatible).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  anygpt base 'text|speech|Hello there'\n"
        "  anygpt base 'speech|text|question.wav' 'text|music|calm piano'\n"
        "  anygpt chat 'interleaved|What is this?|||cat.jpg'\n"
        "  anygpt debug-bundle /tmp/bundle",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser(
        "base",
        help="run the base model on 'source|target|content[|voice.wav]' prompts",
        description="Base model. Prompt forms: text|image|CAPTION, image|text|PATH, "
        "text|speech|TEXT[|VOICE.wav], speech|text|PATH, text|music|CAPTION, "
        "music|text|PATH, text|audio|CAPTION, audio|text|PATH. "
        "Write \\| for a literal bar inside a field.",
    )
    _common_model_args(b, "infer_output/base")
    b.add_argument(
        "--instruction", help="use this instruction instead of a random one from AnyGPT's lists"
    )
    b.add_argument(
        "--guidance-scale",
        type=guidance_value,
        default=None,
        help="classifier-free guidance of text -> media requests: how much more the text weighs "
        "than in plain decoding (1 = off; default: the bundle's decoding configs)",
    )

    c = sub.add_parser(
        "chat",
        help="talk with the chat model",
        description="Chat model. Lines: 'interleaved|TEXT|TO_MODALITY|VOICE|IMAGES|SPEECH|MUSIC' "
        "(comma-separated file lists; trailing fields may be omitted), plain text, "
        "'|clear' to forget the conversation, 'quit' to leave. One-shot prompts "
        "are turns of one conversation.",
    )
    _common_model_args(c, "infer_output/chat")
    c.add_argument("--voice", help="voice prompt wav for spoken replies (default: a random voice)")
    li = c.add_argument_group(
        "listening (spoken turns found by a VAD; speaking interrupts a reply)"
    )
    li.add_argument("--listen", metavar="WAV|mic", help="a wav played as a live stream, or 'mic'")
    li.add_argument("--listen-speed", type=float, default=1.0,
                    help="stream seconds per second (1: real time; 0: as fast as possible)")  # fmt: skip
    li.add_argument("--vad", choices=("silero", "energy"), default="silero",
                    help="voice activity detector (energy: a level detector, no extra package)")  # fmt: skip
    li.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability")
    li.add_argument(
        "--min-speech-ms", type=float, default=250.0, help="shortest speech that counts"
    )
    li.add_argument("--min-silence-ms", type=float, default=500.0, help="silence that ends a turn")
    k = c.add_argument_group("cascaded speech (ASR -> text reply -> TTS)")
    k.add_argument(
        "--cascade",
        action="store_true",
        help="speech inputs are transcribed (ASR) and replies asked as speech "
        "(TO_MODALITY speech) are a text reply spoken sentence by sentence (TTS)",
    )
    k.add_argument(
        "--asr-model", help="bundle whose speech -> text does the ASR (default: --model)"
    )
    k.add_argument(
        "--tts-model", help="bundle whose text -> speech does the TTS (default: --model)"
    )

    d = sub.add_parser(
        "debug-bundle", help="write a tiny randomly initialised bundle (outputs are noise)"
    )
    d.add_argument("out_dir", help="folder to create")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--modalities",
        default="speech,music,audio,image",
        help="comma-separated modalities (AnyGPT's image, speech, music, audio), tokenizer "
        "definitions of tokenizers/ or family types (e.g. 'units', 'vq-image'); one per modality",
    )
    d.add_argument(
        "--no-soundstorm", action="store_true", help="leave SoundStorm out of the speech modality"
    )
    d.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    r = sub.add_parser(
        "reconstruct",
        help="encode media files to codes and decode them back (codec check)",
        description="Round trip media through a modality tokenizer of a bundle: "
        "file -> codes -> file. Prints the code shape of each file.",
    )
    r.add_argument("files", nargs="+", help="media files")
    r.add_argument("--modality", required=True, help="speech, music, audio or image")
    r.add_argument(
        "--model", "--model-name-or-path", dest="model", default=None, help="bundle folder"
    )
    r.add_argument("--output-dir", default="infer_output/reconstruct")
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    r.add_argument("--seed", type=int, default=None)
    add_file_flags(r, hidden=True)

    h = sub.add_parser(
        "convert-hubert",
        help="convert a fairseq HuBERT checkpoint to a Hugging Face folder",
        description="fairseq HuBERT .pt -> Hugging Face HubertModel folder (config.json + "
        "model.safetensors) for the speech-units tokenizer.",
    )
    h.add_argument("checkpoint", help="fairseq checkpoint, e.g. mhubert_base_vp_en_es_fr_it3.pt")
    h.add_argument("out_dir")
    h.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow reading a checkpoint whose config is pickled (only for files you trust)",
    )
    k = sub.add_parser(
        "convert-kmeans",
        help="convert a pickled k-means model to centroids.safetensors",
        description="Reads the cluster centres of a pickled scikit-learn KMeans (e.g. "
        "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin). This unpickles the file "
        "(through a restricted unpickler that rebuilds only arrays), so it runs "
        "only with --trust: use it on files you trust.",
    )
    k.add_argument("kmeans_file")
    k.add_argument("out_file", help="e.g. models/mhubert/centroids.safetensors")
    k.add_argument("--trust", action="store_true", help="I trust this file; unpickle it")

    from anygpt import commands

    commands.register(sub)
    return parser


def _load_bundle(args: argparse.Namespace):
    from anygpt.bundle import Bundle
    from anygpt.debug_bundle import ensure_default_model

    root = Path(args.model) if args.model else ensure_default_model()
    bundle = Bundle(root, **bundle_options(args))
    apply_file_overrides(bundle, file_overrides(args))
    return bundle


# Every modality file a bundle may name has a flag: (flag, modality, file key, what it is).
# The key None stands for the family's main weights file.
FILE_FLAGS = [
    ("--speech-tokenizer-path", "speech", None, "SpeechTokenizer weights (ckpt.dev)"),
    ("--speech-tokenizer-config", "speech", "config", "SpeechTokenizer config.json"),
    ("--soundstorm-path", "speech", "soundstorm", "SoundStorm weights"),
    ("--image-tokenizer-path", "image", None, "SEED seed_quantizer.pt"),
    ("--eva-vit-path", "image", "vit", "EVA ViT-g weights (eva_vit_g.pth) for SEED"),
    ("--unclip-path", "image", "unclip", "Stable Diffusion 2.1 unCLIP folder"),
    ("--music-tokenizer-path", "music", None, "music tokenizer (EnCodec 32 kHz folder)"),
    ("--audio-tokenizer-path", "audio", None, "audio tokenizer (EnCodec 24 kHz folder)"),
]


def add_file_flags(group, hidden: bool = False) -> None:
    for flag, _, _, what in FILE_FLAGS:
        group.add_argument(
            flag, help=argparse.SUPPRESS if hidden else f"{what}; overrides the bundle"
        )


def file_overrides(args: argparse.Namespace) -> dict[str, dict[str | None, str | None]]:
    out: dict[str, dict[str | None, str | None]] = {}
    for flag, modality, key, _ in FILE_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value:
            out.setdefault(modality, {})[key] = value
    return out


# files that sit beside a tokenizer's own weights: naming one keeps a ready-made model folder
_COMPANION_FILES = ("unclip", "soundstorm", "soundstorm_config")


def apply_file_overrides(bundle, overrides: dict[str, dict[str | None, str | None]]) -> None:
    """Point modality files at the paths given on the command line.

    The key ``None`` stands for the family's main weights file (SEED's quantizer, SpeechTokenizer's
    checkpoint, the model folder of other families); a bundle's ready-made model folder then
    gives way, so the file the user named is the one that is read.
    """
    from anygpt.modalities.registry import family

    for modality, files in overrides.items():
        entry = bundle.config.modalities.get(modality)
        if entry is None:
            continue
        for key, value in files.items():
            if not value:
                continue
            key = key or family(entry.type).weights_file
            entry.files[key] = str(Path(value).resolve())
            if key != "model" and key not in _COMPANION_FILES:
                entry.files.pop("model", None)


def _read_batch(path: str) -> list[str]:
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise CommandError(f"batch file {path} is not UTF-8 text") from None
        except OSError as exc:
            why = "it is a folder" if Path(path).is_dir() else exc.strerror
            raise CommandError(f"cannot read batch file {path}: {why}") from None
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def clip_message(text: str, limit: int = 400) -> str:
    """One line of at most about ``limit`` characters (a huge bad field is never echoed whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def _print_outcome(o, sink=None, as_json: bool = False) -> None:
    """Write an outcome's media through ``sink`` (a failure becomes its error), then print it.

    Text goes to stdout as ``results: ...`` and ``saved: PATH``; notes and errors go to stderr
    (``note: ...``, ``error: ...``).  With ``as_json`` one JSON object per request goes to stdout.
    """
    if sink is not None and o.ok and o.media and not o.files:
        try:
            sink.write(o)
        except OSError as exc:  # files already written stay listed in o.files
            o.error = f"cannot write the {o.media[0].modality} output: {exc.strerror or exc}"
            if exc.filename:
                o.error += f" ({exc.filename})"
    if as_json:
        import json

        record = {
            "request": o.request,
            "text": o.text,
            "files": [str(f) for f in o.files],
            "notes": list(o.notes),
            "error": None if o.error is None else clip_message(o.error),
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    if o.error:
        for f in o.files:
            print(f"saved: {f}", flush=True)
        print(f"error: {clip_message(o.error)}  [{clip_message(o.request, 80)}]", file=sys.stderr)
        return
    if o.text is not None:
        print(f"results: {o.text}")
    for note in o.notes:
        print(f"note: {note}", file=sys.stderr)
    for f in o.files:
        print(f"saved: {f}")
    sys.stdout.flush()


def _interactive(handle, first: str, later: str, sink=None, as_json: bool = False) -> int:
    """Read request lines until ``quit`` or end of input.

    On a terminal the prompts are shown and lines can be edited and recalled (readline);
    Ctrl-C during a request cancels that request only, Ctrl-C at the prompt leaves (status 130).
    Piped input gets no prompt text.
    """
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401 - importing it gives input() line editing and history
        except ImportError:
            pass
    prompt = first
    while True:
        try:
            line = input(prompt + "\n" if tty else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return EXIT_INTERRUPTED
        prompt = later
        if line.strip() == "quit":
            return 0
        if not line.strip():
            continue
        try:
            for o in handle([line]):
                _print_outcome(o, sink, as_json)
        except KeyboardInterrupt:
            print("note: cancelled", file=sys.stderr)


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder and make sure files can be written there, before any work."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CommandError(f"the output folder {folder} is a file (or lies in one)") from None
    except OSError as exc:
        raise CommandError(
            f"cannot create the output folder {folder}: {exc.strerror} ({exc.filename})"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write to the output folder {folder}: permission denied")
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CommandError(f"cannot write to the output folder {folder}: {exc.strerror}") from None
    return folder


def check_voice_file(path: str, what: str = "voice prompt") -> None:
    """A voice prompt must be a readable audio file; found before any generation."""
    from anygpt.audio import probe_audio

    try:
        probe_audio(path)
    except ValueError as exc:
        raise CommandError(f"{what}: {exc}") from None


def _precheck_base(lines: list[str], modalities: list[str]) -> tuple[list[str], list]:
    """Split off base lines whose voice prompt is unusable (reported before any generation)."""
    from anygpt.runtime.engine import Outcome
    from anygpt.runtime.requests import REQUEST_ERRORS, parse_base_line

    keep, failed = [], []
    for line in lines:
        try:
            req = parse_base_line(line, modalities)
            if req.voice_prompt:
                check_voice_file(req.voice_prompt)
        except CommandError as exc:
            failed.append(Outcome(line, error=str(exc)))
            continue
        except REQUEST_ERRORS:
            pass  # the engine reports it in its place
        keep.append(line)
    return keep, failed


def cmd_base(args: argparse.Namespace) -> int:
    from anygpt.runtime.engine import Engine
    from anygpt.runtime.media import FileSink

    sink = FileSink(prepare_output_dir(args.output_dir))
    bundle = _load_bundle(args)
    engine = Engine(
        bundle,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        instruction=args.instruction,
        guidance_scale=args.guidance_scale,
    )
    engine.max_input_seconds = args.max_seconds
    lines = list(args.prompts) + (_read_batch(args.batch) if args.batch else [])
    if not lines:

        def handle(batch: list[str]):
            keep, failed = _precheck_base(batch, bundle.modality_names)
            return failed + engine.run_base(keep)

        return _interactive(
            handle, "Please talk with AnyGPT:", "Please input prompts:", sink, args.json
        )
    lines, failed = _precheck_base(lines, bundle.modality_names)
    for o in failed:
        _print_outcome(o, sink, args.json)
    # each result is written and printed as soon as it is done
    outcomes = engine.run_base(lines, on_outcome=lambda o: _print_outcome(o, sink, args.json))
    return 0 if not failed and all(o.ok for o in outcomes) else EXIT_ERROR


def cmd_chat(args: argparse.Namespace) -> int:
    from anygpt.runtime.chat import ChatSession
    from anygpt.runtime.engine import Engine, Outcome
    from anygpt.runtime.media import FileSink

    if args.voice:
        check_voice_file(args.voice, "--voice")
    sink = FileSink(prepare_output_dir(args.output_dir))
    bundle = _load_bundle(args)
    engine = Engine(bundle, seed=args.seed, batch_size=1, max_new_tokens=args.max_new_tokens)
    engine.max_input_seconds = args.max_seconds
    session = ChatSession(engine, voice=args.voice)
    cascade = _cascade(args, engine) if args.cascade else None
    if args.listen:
        return _listen(args, session, sink)

    def handle(lines: list[str]) -> list[Outcome]:
        out = []
        for line in lines:
            fields = line.split("|")
            if len(fields) >= 2 and fields[1].strip() == "clear":
                session.clear()
                out.append(Outcome(line, text="(conversation cleared)"))
                continue
            history = list(session.conversation.messages)
            try:
                out.append(cascade_turn(cascade, session, line) if cascade else session.turn(line))
            except KeyboardInterrupt:  # a cancelled turn leaves the conversation as it was
                session.conversation.messages[:] = history
                raise
        return out

    lines = list(args.prompts) + (_read_batch(args.batch) if args.batch else [])
    if not lines:
        return _interactive(
            handle, "Please talk with AnyGPT chat:", "Please input prompts:", sink, args.json
        )
    ok = True
    for line in lines:
        if line.strip() == "quit":
            break
        for o in handle([line]):
            _print_outcome(o, sink, args.json)
            ok &= o.ok
    return 0 if ok else EXIT_ERROR


def _listen(args: argparse.Namespace, session, sink) -> int:
    """``chat --listen``: turns from a wav stream or the microphone, replies interruptible."""
    import json

    from anygpt.runtime.listen import listen, mic_chunks, wav_chunks
    from anygpt.runtime.vad import StreamingVAD

    try:
        if args.listen == "mic":
            chunks = mic_chunks()
        else:
            check_voice_file(args.listen, "--listen")
            chunks = wav_chunks(args.listen)
        vad = StreamingVAD(threshold=args.vad_threshold, min_speech_ms=args.min_speech_ms,
                           min_silence_ms=args.min_silence_ms,
                           max_utterance_s=args.max_seconds or 20.0, detector=args.vad)  # fmt: skip
        out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone
        events = listen(session, chunks, vad=vad, speed=max(args.listen_speed, 0.0), sink=sink,
                        report=lambda t, msg: print(f"[{t:7.2f}s] {msg}", file=out, flush=True))  # fmt: skip
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {clip_message(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(events))
    return 1 if any(e["kind"] == "error" for e in events) else 0


def _cascade(args: argparse.Namespace, engine):
    """The cascade of ``anygpt chat --cascade``: ASR and TTS from their own bundles when named."""
    from anygpt.bundle import Bundle
    from anygpt.runtime.cascade import Cascade
    from anygpt.runtime.engine import Engine

    def stage(path: str | None):
        if not path:
            return None
        if not Path(path).is_dir():
            raise CommandError(f"{path} is not a bundle folder")
        return Engine(Bundle(Path(path), **bundle_options(args)), seed=args.seed)

    try:
        return Cascade(engine, asr=stage(args.asr_model), tts=stage(args.tts_model))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def cascade_turn(cascade, session, line: str):
    """One ``--cascade`` chat line: through the cascade when it has speech in or asks for speech."""
    from anygpt.runtime.engine import Outcome
    from anygpt.runtime.requests import REQUEST_ERRORS, parse_chat_line

    try:
        req = parse_chat_line(line, None)
    except REQUEST_ERRORS as exc:
        return Outcome(line, error=str(exc))
    if not req.speech and req.to_modality != "speech":
        return session.turn(line)
    result = cascade.turn(session, req, speak=req.to_modality == "speech")
    result.outcome.request = line
    return result.outcome


def cmd_debug_bundle(args: argparse.Namespace) -> int:
    from anygpt.debug_bundle import write_debug_bundle

    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    path = write_debug_bundle(
        args.out_dir,
        modalities=mods,
        seed=args.seed,
        soundstorm=not args.no_soundstorm,
        overwrite=args.overwrite,
    )
    print(f"wrote debug bundle: {path} (random weights: outputs are noise)")
    return 0


def _quiet_transformers(args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from anygpt.runtime.engine import Engine, Outcome
    from anygpt.runtime.media import FileSink
    from anygpt.runtime.requests import REQUEST_ERRORS

    bundle = _load_bundle(args)
    engine = Engine(bundle, seed=args.seed)
    sink = FileSink(args.output_dir)
    bundle.modality(args.modality)  # an unknown modality fails before any file is read
    ok = True
    for f in args.files:
        try:
            codes, media = engine.reconstruct(args.modality, f)
            print(f"codes: {f}: {codes.codes.shape[1]} x {int(codes.lengths[0])}")
            for p in sink.write(Outcome(f, media=media)):
                print(f"saved: {p}")
        except REQUEST_ERRORS as exc:
            ok = False
            print(f"error: {exc}  [{f}]", file=sys.stderr)
    return 0 if ok else EXIT_ERROR


def cmd_convert_hubert(args: argparse.Namespace) -> int:
    from anygpt.models.hubert_units import convert_fairseq_hubert

    out = convert_fairseq_hubert(args.checkpoint, args.out_dir, trust_pickle=args.trust_pickle)
    print(f"wrote: {out}")
    return 0


def cmd_convert_kmeans(args: argparse.Namespace) -> int:
    from anygpt.models.hubert_units import convert_kmeans

    out = convert_kmeans(args.kmeans_file, args.out_file, trust=args.trust)
    print(f"wrote: {out}")
    return 0


COMMANDS = {
    "convert-hubert": cmd_convert_hubert,
    "convert-kmeans": cmd_convert_kmeans,
    "base": cmd_base,
    "chat": cmd_chat,
    "debug-bundle": cmd_debug_bundle,
    "reconstruct": cmd_reconstruct,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "verbose", False):
        # transformers imports torchao (when installed) with any model; on a CPU build it logs
        # missing CUDA kernels and Enum registrations that concern no command of ours
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched at run time
    _quiet_transformers(args)
    from anygpt.checkpoint import CheckpointError
    from anygpt.modalities.base import ModalityError

    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except (CheckpointError, ModalityError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {clip_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # the environment: permissions, a full disk, a missing device
        where = f" ({exc.filename})" if exc.filename else ""
        why = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
        print(f"error: {clip_message(why)}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
