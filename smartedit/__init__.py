"""SmartEdit: reasoning image editing with a multimodal LLM (LLaVA) conditioning an InstructPix2Pix UNet."""

from .config import SmartEditConfig, preset

__version__ = "0.1.0"
__all__ = ["SmartEditConfig", "preset", "__version__"]
