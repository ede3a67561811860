"""``votemi models``: the models a server offers (a health check), and what the chosen one accepts (``--probe``)."""

from __future__ import annotations

from dataclasses import replace

from .. import events
from ..names import DEFAULT_SERVER_URL, HTTP_BACKENDS
from ..vlm.errors import VLMError
from ..vlm.pipeline import DescribeSettings, list_models, make_client
from ..vlm.urls import redact_url
from .arguments import add_backend_argument, add_events_argument, add_key_arguments, api_key, fail


def add_models_command(commands) -> None:
    """Register ``votemi models`` (the server check of Slicer's status line)."""
    parser = commands.add_parser("models", help="list the models a server offers (a health check)",
                                 description="Ask a model server which models it offers.")
    parser.add_argument("--server", default=DEFAULT_SERVER_URL, metavar="URL", help="server URL (default: %(default)s)")
    add_backend_argument(parser, HTTP_BACKENDS)
    add_key_arguments(parser)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="time limit (default: 10)")
    parser.add_argument("--probe", action="store_true",
                        help="also find out what the model accepts (images, images per request, context length, "
                             "JSON schema) with a few one-token requests, and store it for describe")
    parser.add_argument("--model", default="", help="model to probe (default: the server's only model)")
    add_events_argument(parser)
    parser.set_defaults(func=run_models)


def run_models(args) -> int:
    """``votemi models``: one model name a line; 1 if the server cannot be asked."""
    settings = DescribeSettings(server_url=args.server, backend=args.backend, api_key=api_key(args),
                                timeout_s=args.timeout, connect_timeout_s=min(args.timeout, 10.0),
                                idle_timeout_s=args.timeout, retries=0)
    try:
        models = list_models(settings)
    except VLMError as error:
        return fail(str(error))
    events.emit(events.MODELS, server=redact_url(args.server), models=list(models))
    for model in models:
        print(model)
    if args.probe:
        return _run_probe(args, settings, models)
    return 0


def _run_probe(args, settings, models) -> int:
    """``votemi models --probe``: probe the chosen model, store and print the result (one line, then notes)."""
    from ..vlm.capabilities import probe, store

    model = args.model.strip() or (models[0] if len(models) == 1 else "")
    if not model:
        return fail(f"{redact_url(args.server)} offers {len(models)} models; choose the one to probe with --model")
    client = make_client(replace(settings, timeout_s=max(args.timeout, 60.0), idle_timeout_s=max(args.timeout, 60.0)))
    try:
        found = probe(client, model, settings.num_ctx)
    except VLMError as error:
        return fail(f"probing {model}: {error}")
    store(found)
    events.emit(events.CAPABILITIES, capabilities=found.to_dict(), summary=found.summary())
    print(f"{model}: {found.summary()}")
    for note in found.notes:
        print(f"  {note}")
    return 0
