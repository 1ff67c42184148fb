"""The ShapesWorld recipe in one command: pretrain the tiny VAE, LLaVA and InstructPix2Pix (+ a regression
control), assemble, train stage 1 → 2a → 2b with the project's scripts, evaluate every model on the held-out
Reason-Edit-layout test set and write the ablation. Resumable: re-run the same command after an interruption.

    python train/shapes_recipe.py --output runs/shapes                      # everything (~2 h on 2 CPU cores)
    python train/shapes_recipe.py --output runs/shapes --steps vae,llava    # a subset
    python train/shapes_recipe.py --output runs/shapes --ship checkpoints   # copy the results to checkpoints/
    python train/shapes_recipe.py --output runs/rerun --compare checkpoints/smartedit-tiny  # reproduced?
    python train/shapes_recipe.py --output runs/s1 --set seed=1             # another seed
    python train/shapes_recipe.py --summarize runs/shapes,runs/s1,runs/s2 --output runs/seeds  # over seeds

The work is done by :mod:`smartedit.shapes.recipe`; budgets: ``--print-config``, change them with ``--set``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    from smartedit.shapes.recipe import STEPS

    p = argparse.ArgumentParser(prog="train/shapes_recipe.py", description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/shapes", help="recipe folder (default runs/shapes)")
    p.add_argument("--config", help="recipe JSON (default: the config --output was started with, else the built-in "
                                    "budgets; see --print-config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a budget, e.g. ip2p.steps=3000 or eval.per_category=50; repeatable")
    p.add_argument("--steps", help=f"comma-separated subset of: {', '.join(STEPS)} (default: all, in order)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    p.add_argument("--eval-models", metavar="A,B",
                   help="score only these models in the evaluate step (identity, ip2p, ip2p_mix, control, mllmsd, "
                        "smartedit, plainly: the fair IP2P-tiny told each instruction plainly), e.g. the baselines in a second process while stage 2 trains; the step is not marked done")
    p.add_argument("--pretrained-from", metavar="RUN",
                   help="take the pretraining steps (VAE, ViT, LLaVA, control, both IP2P-tiny) that RUN finished "
                        "instead of training them, each one whose budgets agree with this config (the others train "
                        "here, and the log says why): for a seed study of stages 1 -> 2b (--set seed=N) or a new "
                        "LLaVA-tiny on the same editors. RUN is a recipe run or a shipped folder such as "
                        "checkpoints (its VAE and both IP2P-tiny)")
    p.add_argument("--force", action="store_true", help="re-run steps already done")
    p.add_argument("--ship", metavar="DIR", help="after the steps, copy SmartEdit-tiny, both IP2P-tiny and LLaVA-tiny "
                   "into DIR (a run without stages: its LLaVA-tiny alone). The steps still to do run first: ship a "
                   "run as it stands with a finished step, e.g. --steps report (or --steps llava)")
    p.add_argument("--compare", metavar="RUN", help="after the steps, compare --output's scores with RUN's on the same "
                   "held-out samples; RUN is a recipe output folder or a shipped one (checkpoints/smartedit-tiny "
                   "keeps its per-sample scores). Writes reproduction.json / .md into --output; exit status 1 if "
                   "not reproduced")
    p.add_argument("--summarize", metavar="RUN,RUN,...", help="summarise finished runs of different seeds (mean ± "
                   "spread, every seed's paired interval, the paper's claim checked seed by seed) into --output's "
                   "seeds.json / seeds.md instead of running steps")
    p.add_argument("--print-config", action="store_true", help="print the recipe config as JSON and exit")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from smartedit.config import ConfigError
    from smartedit.train.config import parse_override
    from smartedit.shapes.recipe import RecipeConfig, compare_runs, reuse_pretrained, run_recipe, seed_summary, ship

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        started = os.path.join(args.output, RecipeConfig.FILE_NAME)
        if args.config:
            cfg = RecipeConfig.load(args.config)
        elif os.path.isfile(started) and not args.summarize:  # going on with a run: its own config, not the defaults
            cfg = RecipeConfig.load(started)
            logging.getLogger("shapes_recipe").info("going on with %s's recipe config (%s)", args.output, started)
        else:
            cfg = RecipeConfig()
        overrides = dict(parse_override(item) for item in args.set)
        cfg = cfg.replace(**overrides) if overrides else cfg.validate()
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        if args.summarize:
            runs = [r.strip() for r in args.summarize.split(",") if r.strip()]
            result = seed_summary(runs, args.output)
            with open(os.path.join(args.output, "seeds.md"), encoding="utf-8") as f:
                print(f.read())
            return 0 if all(c["holds"] for c in result["claim"].values()) else 1
        steps = tuple(s.strip() for s in args.steps.split(",") if s.strip()) if args.steps else None
        models = tuple(m.strip() for m in args.eval_models.split(",") if m.strip()) if args.eval_models else None
        if args.pretrained_from:
            reuse_pretrained(cfg, args.output, args.pretrained_from)
        run_recipe(cfg, args.output, steps=steps, force=args.force, threads=args.threads, eval_models=models)
        if args.ship:
            for name, where in ship(args.output, args.ship).items():
                logging.getLogger("shapes_recipe").info("shipped %s to %s", name, where)
        if args.compare:
            result = compare_runs(args.output, args.compare)
            with open(os.path.join(args.output, "reproduction.md"), encoding="utf-8") as f:
                print(f.read())
            if not result["reproduced"]:
                return 1
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        logging.getLogger("shapes_recipe").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
