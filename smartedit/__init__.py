"""SmartEdit: reasoning image editing with a multimodal LLM (LLaVA) conditioning an InstructPix2Pix UNet."""

import logging

from .config import SmartEditConfig, preset

# bitsandbytes (LLM quantization) warns at import on CPU that an optional hub-downloaded kernel is absent; its own
# CPU code path is used instead, so the warning is noise in every run that imports peft or transformers.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["SmartEditConfig", "preset", "__version__"]
