"""The dataset readers: one module per public dataset, each reading the layout that dataset is published in.

A reader is a data recipe (registered in :mod:`smartedit.data.recipes`: ``NAME``, ``HELP``, ``add_arguments``,
``samples_from_args``, ``prefix_from_args``), run by ``smartedit data convert NAME`` and ``data_recipes/*.py``.
The schema, validation, shard I/O and mixture machinery it writes through stay in :mod:`smartedit.data`.

| module | public dataset → sample kind | published layout it reads |
|---|---|---|
| ``ip2p`` | InstructPix2Pix (CLIP-filtered) → edit | HF parquet: original_image, edited_image, edit_prompt |
| ``magicbrush`` | MagicBrush → edit + mask | HF parquet (train, dev): source_img, mask_img, target_img, … |
| ``ultraedit`` | UltraEdit (free-form, region) → edit | parquet: edit_prompt, source/edited_image[, mask_image] |
| ``refcoco`` | RefCOCO / RefCOCO+ / RefCOCOg → perception | ``refs(unc).p`` + COCO ``instances.json`` + images |
| ``grefcoco`` | gRefCOCO → perception (multi, no target) | ``grefs(unc).json`` + ``instances.json`` + images |
| ``cocostuff`` | COCO-Stuff → perception (20 % absent) | stuffthingmaps label PNGs (255 = ignore) + COCO images |
| ``reasonseg`` | LISA ReasonSeg → reasoning | ``ReasonSeg/{split}/<name>.jpg`` + ``<name>.json`` polygons |
| ``synthetic`` | SmartEdit synthetic pairs → reasoning | one JSON: origin_img_path, target_img_path, instruction |
| ``llava_instruct`` | LLaVA-Instruct-150K → chat (LM only) | ``llava_instruct_150k.json`` + COCO train2017 images |
| ``cc12m`` | CC12M → caption (stage 1, text only) | ``cc12m.tsv``: url<TAB>caption |

Helpers that only the readers use:

| module | concept |
|---|---|
| ``hfparquet`` | Hugging Face parquet shards: split files, image struct cells |
| ``coco`` | COCO ``instances.json`` index; polygon / RLE segmentation → mask (no pycocotools) |
| ``perception`` | segmentation as editing (InstructDiffusion templates, 8 colours, half-blend target) |
| ``masks`` | published edit-region masks (RGBA, black/white, soft) → the schema's mask PNG |
"""
