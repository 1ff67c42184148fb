"""Installs the ``smartedit`` package and the ``smartedit`` console command.

``install_requires`` holds compatible ranges: the lower bound is the version tested, newer releases up to the
next major version are allowed, so the package installs into an existing environment. ``constraints.txt`` pins
every package (transitive ones included) to the exact versions CI runs; ``scripts/setup.sh`` installs with it:
``pip install -c constraints.txt -e .[dev]``.

torch is installed first, on its own (``scripts/setup.sh``: the CPU wheel); a torch pulled in by pip here would be
a multi-GB CUDA build. GPU users install their CUDA torch first (``pip install torch==2.13.0 --index-url ...``).

Extras: ``dev`` (the test suite: pytest, the notebook runner, and the web demo with the browser driver its
end-to-end tests use), ``demo`` (the web demo and Jupyter for the notebooks), ``train`` (TensorBoard logging for
the training scripts), ``gpu`` (flash-attn, needs CUDA and a compiler).
"""

from setuptools import find_namespace_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.13,<3",
    "transformers>=5.23,<6",
    "tokenizers>=0.23,<1",
    "huggingface-hub>=2.4,<3",
    "diffusers>=0.42.1,<1",
    "accelerate>=1.15,<2",
    "deepspeed>=0.19.8,<1",
    "peft>=0.21.2,<1",
    "safetensors>=0.8,<1",
    # tensor rearrangements (patchify, merge-unit order, the BIM's patch grid)
    "einops>=0.8,<1",
    "datasets>=5.2,<6",
    "pyarrow>=26",
    "torchmetrics>=1.9,<2",
    "numpy>=2.4,<3",
    # gradio 6 (the web demo) needs Pillow < 13; both 12 and 13 are tested
    "Pillow>=12,<14",
    "tqdm>=4.66,<5",
    # LLaMA/Vicuna folders that ship only a SentencePiece tokenizer.model
    "sentencepiece>=0.2,<1",
    "protobuf>=7,<8",
]

# the web demo (smartedit demo)
DEMO_APP = ["gradio>=6,<7"]

# 8-bit / 4-bit LLM weights (smartedit edit --quantize-llm, SmartEditPipeline.from_pretrained(llm_quantization=))
QUANT = ["bitsandbytes>=0.48,<1"]

EXTRAS = {
    # the test suite: notebooks are executed, the web demo is driven in a headless Chromium (Debian's chromium
    # package; playwright's own browser download is not used)
    "dev": ["pytest>=9,<10", "nbclient>=0.11,<1", "nbformat>=5.11,<6", "ipykernel>=7,<8", "ipywidgets>=8.1,<9",
            "playwright>=1.50,<2", *DEMO_APP, *QUANT],
    "demo": [*DEMO_APP, "jupyter>=1.1,<2"],
    # TensorBoard logging (log.tensorboard: auto uses it when installed)
    "quant": QUANT,
    "train": ["tensorboard>=2.18,<3"],
    # flash-attn: for attn_implementation="flash_attention_2" on CUDA
    "gpu": ["flash-attn"],
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
    entry_points={
        "console_scripts": ["smartedit=smartedit.cli:main"],
        # data source kinds of the trainer (smartedit.data.sources): shapes:FAMILY:N, generated ShapesWorld samples
        "smartedit.data_sources": ["shapes=smartedit.shapes.sources:open_shapes_source"],
    },
)
