"""Installs the ``smartedit`` package and the ``smartedit`` console command.

torch is pinned to the CPU wheel this project is developed and tested with; an unpinned torch pulls a multi-GB
CUDA build. GPU users install their own CUDA torch first (``pip install torch==2.13.0 --index-url ...``).
"""

from setuptools import find_namespace_packages, setup

INSTALL_REQUIRES = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "diffusers==0.42.1",
    "accelerate==1.15.0",
    "deepspeed==0.19.8",
    "peft==0.21.2",
    "safetensors==0.8.0",
    "datasets==5.2.0",
    "pyarrow==26.0.1",
    "torchmetrics==1.9.0",
    "einops==0.8.2",
    "numpy==2.4.6",
    "Pillow==13.0.0",
    "tqdm",
    # LLaMA/Vicuna folders that ship only a SentencePiece tokenizer.model
    "sentencepiece==0.2.3",
    "protobuf==7.36.2",
]

EXTRAS = {
    # tests, including executing the demo notebooks
    "dev": ["pytest==9.2.0", "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
    "gpu": ["flash-attn"],
    "demo": ["gradio", "jupyter"],
    "train": ["tensorboard"],
}

setup(
    name="smartedit",
    version="0.1.0",
    description="SmartEdit: reasoning image editing with a multimodal LLM conditioning an InstructPix2Pix UNet",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["smartedit", "smartedit.*"]),
    package_data={"smartedit": ["assets/tiny_tokenizer/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["smartedit=smartedit.cli:main"]},
)
