"""CLI: `push` (an adapter folder to a Hugging Face hub repo, with its model card)."""

from __future__ import annotations

import argparse

from roberta_lora.cli.output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser(
        "push", help="upload an adapter to a Hugging Face hub repo, with a model card",
        description="Uploads adapter.safetensors, adapter_config.json and README.md: the folder's card with YAML "
                    "front matter (base model, tags, datasets, license, validation metrics as a model-index). "
                    "The folder itself is not changed. Others download it with --adapter user/name.",
    )
    push.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter.safetensors)")
    push.add_argument("--repo", required=True, help="hub repo to push to, user/name (created when missing)")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its "
                                                             "visibility)")
    push.add_argument("--token", help="hub token with write access (default: HF_TOKEN or the token saved by "
                                      "`hf auth login`)")
    push.add_argument("--license", help="license id for the card, e.g. mit or apache-2.0 (default: none)")
    push.add_argument("--base-model", help="hub id of the base, when the adapter records a local folder "
                                           "(e.g. FacebookAI/roberta-base)")
    push.add_argument("--message", help="commit message (default: 'Upload roberta-lora <task> adapter')")
    push.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> int:
    from roberta_lora.model.hub_card import push_adapter

    url = push_adapter(args.adapter, args.repo, private=args.private, token=args.token, commit_message=args.message,
                       license=args.license, base_model=args.base_model)
    print_json({"url": url, "repo": args.repo, "adapter": args.adapter, "private": args.private})
    return 0
