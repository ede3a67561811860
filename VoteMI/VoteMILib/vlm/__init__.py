"""Describe the voted slices with a vision-language model hosted on the user's own machine or network.

Public API (used by the Slicer module and the ``votemi describe`` command)::

    from VoteMILib.vlm import DescribeSettings, Report, VLMError, VLMCancelled, describe, list_models

    settings = DescribeSettings(server_url="http://127.0.0.1:11434", backend="openai", model="medgemma")
    report = describe(volume, selection_result, settings, on_text=print, cancel=stop_event.is_set)
    print(report.to_text())   # notice, model text, image list

Only the standard library is needed for the HTTP clients; the in-process model and
``votemi serve`` need torch and transformers (``pip install votemi[vlm]``).
"""

from .clients import OllamaClient, OpenAIClient
from .errors import VLMCancelled, VLMError
from .imaging import CT_PRESET_NAMES, CT_PRESETS, THREE_WINDOWS, choose_windowing, detect_modality
from .options import ChatResult, GenerationOptions, Timeouts
from .pipeline import DescribeSettings, build_request, describe, list_models, make_client, prepare_images
from .prompts import DEFAULT_TEMPLATE, PLACEHOLDERS, Prompt, PromptImage, build_prompt
from .report import NOTICE, Report

__all__ = [
    "CT_PRESETS", "CT_PRESET_NAMES", "ChatResult", "DEFAULT_TEMPLATE", "DescribeSettings",
    "GenerationOptions", "NOTICE", "OllamaClient", "OpenAIClient", "PLACEHOLDERS",
    "Prompt", "PromptImage", "Report", "THREE_WINDOWS", "Timeouts", "VLMCancelled", "VLMError", "build_prompt",
    "build_request", "choose_windowing", "describe", "detect_modality", "list_models", "make_client",
    "prepare_images",
]
