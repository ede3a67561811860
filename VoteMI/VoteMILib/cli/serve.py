"""``votemi serve``: a local model folder over an OpenAI-compatible API, every request bounded."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..vlm.errors import VLMError
from ..vlm.server import CHARS_PER_TOKEN, DEFAULT_HOST, DEFAULT_PORT, ServeLimits
from .arguments import add_key_arguments, api_key, fail, positive_int


def positive(text) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_serve_command(commands) -> None:
    """Register ``votemi serve``."""
    parser = commands.add_parser(
        "serve", help="serve a local model folder over an OpenAI-compatible API",
        description="Load a transformers vision-language model folder and serve it with /v1/chat/completions, "
                    "/v1/models and /health, so Slicer on other machines can use it. Every request is bounded "
                    "by the limits below; what is refused gets an OpenAI-shaped JSON error.")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (e.g. a MedGemma download)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    add_key_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights type (default: bfloat16/float16 on GPU, float32 on CPU)")
    parser.add_argument("--allow-hub", action="store_true", help="let transformers download missing files")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument("--text-only", action="store_true",
                        help="refuse requests with images (400), as a model without its vision projector would; "
                             "for checking clients")
    parser.add_argument("--no-json-schema", action="store_true",
                        help="refuse response_format json_schema (400), as servers without structured output do")
    parser.add_argument("--drop-images", action="store_true",
                        help="accept images but leave them out of the prompt, as a server without its vision "
                             "projector may (llama-cpp-python without --clip_model_path)")
    parser.add_argument("--max-images-per-message", type=positive_int, metavar="N",
                        help="refuse messages with more images (400), as Ollama vision models taking a single image "
                             "per message do (default: only --max-images per request)")
    parser.add_argument("--merge-adjacent-images", action="store_true",
                        help="fuse two same-size images with no text between them into one, as llama.cpp's and "
                             "Ollama's frame merge for Qwen-VL models does (for checking clients)")
    parser.add_argument("--first-image-only", action="store_true",
                        help="let the model see only the first image of each message, as LM Studio was reported "
                             "to do (for checking clients)")
    parser.add_argument("--context", type=positive_int, metavar="N",
                        help="a context of N tokens filled silently: the earliest images are left out until the "
                             "prompt fits, as Ollama does past its num_ctx (for checking clients)")
    defaults = ServeLimits()
    limits = parser.add_argument_group("limits (answered 400 unless said otherwise)")
    limits.add_argument("--max-request-mb", type=positive, default=defaults.max_request_mb, metavar="MB",
                        help="largest request body, refused unread with 413 (default: %(default)g)")
    limits.add_argument("--max-prompt-tokens", type=positive_int, metavar="N",
                        help="longest prompt in tokens after the chat template, images included "
                             "(default: the model's context length)")
    limits.add_argument("--max-prompt-chars", type=positive_int, metavar="N",
                        help="most characters of prompt text, counted before tokenising "
                             f"(default: {CHARS_PER_TOKEN} x --max-prompt-tokens)")
    limits.add_argument("--max-images", type=positive_int, default=defaults.max_images, metavar="N",
                        help="most images per request (default: %(default)s)")
    limits.add_argument("--max-image-megapixels", type=positive, default=defaults.max_image_megapixels, metavar="MP",
                        help="largest image, read from its header before decoding (default: %(default)g)")
    limits.add_argument("--max-total-megapixels", type=positive, default=defaults.max_total_megapixels, metavar="MP",
                        help="most pixels of all images of a request (default: %(default)g)")
    limits.add_argument("--max-new-tokens", type=positive_int, default=defaults.max_tokens_cap, metavar="N",
                        help="most tokens generated per answer; larger max_tokens are lowered (default: %(default)s)")
    limits.add_argument("--queue-timeout", type=positive, default=defaults.queue_timeout_s, metavar="S",
                        help="longest wait for the model behind other requests, then 503 with Retry-After "
                             "(default: %(default)g)")
    limits.add_argument("--generation-timeout", type=positive, default=defaults.generation_timeout_s, metavar="S",
                        help="generation stops after this long and the answer is cut (default: %(default)g)")
    limits.add_argument("--max-connections", type=positive_int, default=defaults.max_connections, metavar="N",
                        help="connections served at once; more are answered 503 at once (default: %(default)s)")
    limits.add_argument("--max-connections-per-client", type=positive_int,
                        default=defaults.max_connections_per_client, metavar="N",
                        help="connections from one client address; more are answered 503 at once, so slow clients "
                             "cannot take every slot (default: %(default)s)")
    limits.add_argument("--header-timeout", type=positive, default=defaults.header_timeout_s, metavar="S",
                        help="total time for a request's headers, however slowly they trickle in; then 408 and the "
                             "connection is closed (default: %(default)g)")
    parser.set_defaults(func=run_serve)


def serve_limits(args) -> ServeLimits:
    """The limits given on the command line (argparse has checked each)."""
    return ServeLimits(max_request_mb=args.max_request_mb, max_prompt_tokens=args.max_prompt_tokens,
                       max_prompt_chars=args.max_prompt_chars, max_images=args.max_images,
                       max_image_megapixels=args.max_image_megapixels,
                       max_total_megapixels=args.max_total_megapixels, max_tokens_cap=args.max_new_tokens,
                       queue_timeout_s=args.queue_timeout, generation_timeout_s=args.generation_timeout,
                       max_connections=args.max_connections,
                       max_connections_per_client=args.max_connections_per_client,
                       header_timeout_s=args.header_timeout)


def run_serve(args) -> int:
    """``votemi serve``: blocks until Ctrl-C; 0 after a clean stop."""
    from ..vlm.inprocess import load_model
    from ..vlm.server import ServeFeatures, VLMServer, is_loopback

    key = api_key(args)
    if not 0 <= args.port <= 65535:
        return fail(f"invalid port {args.port}", 2)
    try:
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
        model = load_model(args.model, device=args.device, dtype=args.dtype, allow_hub=args.allow_hub)
        server = VLMServer(model, args.host, args.port, api_key=key, limits=serve_limits(args),
                           log=None if args.quiet else sys.stderr,
                           features=ServeFeatures(images=not args.text_only, json_schema=not args.no_json_schema,
                                                  images_per_message=args.max_images_per_message,
                                                  drop_images=args.drop_images,
                                                  merge_adjacent_images=args.merge_adjacent_images,
                                                  first_image_only=args.first_image_only,
                                                  context_tokens=args.context))
    except VLMError as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    if not is_loopback(args.host) and not key:
        print("votemi: warning: listening beyond this machine without an API key; anyone who can reach "
              f"{args.host}:{args.port} can use the model", file=sys.stderr)
    print(f"serving {model.name} on {server.url} (device {model.device}); OpenAI-compatible API at "
          f"{server.url}/v1; Ctrl-C to stop", file=sys.stderr, flush=True)
    # Ctrl-C and SIGTERM ask the serving loop to finish: no KeyboardInterrupt can then land in the
    # middle of answering a request or of closing the socket.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            threading.Thread(target=server.shutdown, daemon=True).start()

        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        finished = server.server_close()
    print("votemi: stopped", file=sys.stderr, flush=True)
    if not finished:
        # Interpreter shutdown beside a thread still inside torch aborts the process; leave without it.
        sys.stdout.flush()
        os._exit(0)
    return 0
