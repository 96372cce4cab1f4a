"""Pre-train the embedded foundation model: a small ViT-MAE on the embedded MNIST train split (no labels).

It stands in for `facebook/vit-mae-large` where the Hub cannot be reached (docs/design.md §4). The encoder is saved
with `save_pretrained` as a `ViTMAEModel`, next to a `preprocessor_config.json` that records its input size and
normalization, and a `linear_probe.json` with the quality check (a logistic-regression probe on frozen features).

    accelerate launch training/pretrain_foundation.py --output_dir training/foundation/embedded-vit-mae
    python training/pretrain_foundation.py --probe_only --output_dir training/foundation/embedded-vit-mae
"""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm
from transformers import ViTImageProcessorPil, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from cropd_hf import CRoPDImageProcessor, initialize_vit_mae_embeddings, pool_foundation_outputs
from cropd_hf.data import EMBEDDED_MNIST, load_image_dataset, pixel_tensors, random_shift

DEFAULT_OUTPUT = Path(__file__).parent / "foundation" / "embedded-vit-mae"
# Poolings the probe measures, as (CRoPDConfig.foundation_pooling, foundation_pooling_grid_size).
PROBE_POOLINGS = {"mean": ("mean", 2), "cls": ("cls", 2), "grid2": ("grid", 2), "grid4": ("grid", 4)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_epochs", type=int, default=5)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--image_size", type=int, default=32, help="input size of the foundation model")
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=6)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--max_shift", type=int, default=2, help="random translation in pixels (augmentation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validation_size",
        type=int,
        default=0,
        help="hold this many training digits out of pre-training (500, as the run files do, keeps their validation "
        "split unseen); the linear probe is then also measured on them",
    )
    parser.add_argument(
        "--probe_only", action="store_true", help="only (re)measure the linear probe of the model in --output_dir"
    )
    return parser.parse_args()


def to_foundation_input(images: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    # Exactly what CRoPDForImageClassification.foundation_features does: bilinear resize, then normalize.
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images - mean) / std


@torch.no_grad()
def pooled_features(encoder: ViTMAEModel, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Features of `images` under every pooling of `PROBE_POOLINGS`, from one forward pass per batch."""
    encoder.config.mask_ratio = 0.0
    num_patches = encoder.embeddings.patch_embeddings.num_patches
    features: dict[str, list[torch.Tensor]] = {name: [] for name in PROBE_POOLINGS}
    for batch in images.split(batch_size):
        noise = torch.arange(num_patches, dtype=torch.float32).expand(len(batch), -1)
        outputs = encoder(pixel_values=batch, noise=noise)
        for name, (pooling, grid_size) in PROBE_POOLINGS.items():
            features[name].append(pool_foundation_outputs(outputs, pooling, grid_size))
    return {name: torch.cat(parts) for name, parts in features.items()}


def linear_probe(encoder: ViTMAEModel, train: tuple, test: tuple) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe on frozen features, for each pooling of `PROBE_POOLINGS`.

    Features are standardized first, as MAE's linear probe does with a parameter-free BatchNorm: the probe stays
    linear in the features, but no longer depends on their scale.
    """
    train_features, test_features = pooled_features(encoder, train[0]), pooled_features(encoder, test[0])
    results = {}
    for name in PROBE_POOLINGS:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        probe.fit(train_features[name].numpy(), train[1].numpy())
        results[name] = float(probe.score(test_features[name].numpy(), test[1].numpy()))
    return results


def main() -> None:
    args = parse_args()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(args.seed)

    try:
        splits = load_image_dataset(EMBEDDED_MNIST, seed=args.seed, validation_size=args.validation_size)
    except ValueError as error:  # a --validation_size that leaves no training digits
        raise SystemExit(f"pretrain_foundation.py: error: --validation_size {args.validation_size}: {error}") from None
    native = CRoPDImageProcessor(size={"height": 28, "width": 28}, num_channels=1)
    train_images, train_labels = pixel_tensors(splits["train"], native)
    probe_splits = {name: pixel_tensors(splits[name], native) for name in ("validation", "test") if name in splits}
    if args.probe_only:
        write_linear_probe(args.output_dir, (train_images, train_labels), probe_splits)
        return
    mean, std = train_images.mean().item(), train_images.std().item()

    config = ViTMAEConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=1,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=4 * args.hidden_size,
        decoder_hidden_size=96,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=384,
        mask_ratio=args.mask_ratio,
        layer_norm_eps=1e-6,
    )
    model = ViTMAEForPreTraining(config)
    initialize_vit_mae_embeddings(model)  # transformers 5.23 leaves the position tables at zero otherwise

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_images), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=args.weight_decay
    )
    total_steps = args.epochs * len(loader)
    warmup_steps = args.warmup_epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total_steps)),
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    progress = tqdm(range(args.epochs), desc="MAE pre-training", disable=not accelerator.is_main_process)
    for epoch in progress:
        model.train()
        total = 0.0
        for (images,) in loader:
            inputs = to_foundation_input(random_shift(images, args.max_shift), args.image_size, mean, std)
            loss = model(pixel_values=inputs).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.item()
        progress.set_postfix(loss=f"{total / len(loader):.4f}")
        accelerator.print(f"epoch {epoch + 1}/{args.epochs}: reconstruction loss {total / len(loader):.4f}")

    if accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).vit.eval()
        encoder.config.mask_ratio = 0.0
        encoder.save_pretrained(args.output_dir)
        ViTImageProcessorPil(
            size={"height": args.image_size, "width": args.image_size}, image_mean=[mean], image_std=[std]
        ).save_pretrained(args.output_dir)
        record = {
            "dataset": EMBEDDED_MNIST,
            "train_images": len(train_labels),
            "final_reconstruction_loss": total / len(loader),
            "arguments": {key: str(value) for key, value in vars(args).items() if key != "probe_only"},
        }
        (args.output_dir / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
        write_linear_probe(args.output_dir, (train_images, train_labels), probe_splits)


def write_linear_probe(folder: Path, train: tuple, probe_splits: dict[str, tuple]) -> None:
    """Measure the saved model's linear probe, exactly as CRoPD will see it, and record it in linear_probe.json.

    The probe is fitted on the pre-training images and scored on each split of `probe_splits` (validation, for
    choosing between foundation models; test, read once).
    """
    encoder = ViTMAEModel.from_pretrained(folder).eval()
    preprocessing = json.loads((folder / "preprocessor_config.json").read_text())
    size, mean, std = encoder.config.image_size, preprocessing["image_mean"][0], preprocessing["image_std"][0]
    fit = (to_foundation_input(train[0], size, mean, std), train[1])
    record: dict = {}
    for name, (images, labels) in probe_splits.items():
        record[f"linear_probe_{name}_accuracy"] = linear_probe(
            encoder, fit, (to_foundation_input(images, size, mean, std), labels)
        )
        record[f"{name}_images"] = len(labels)
        print(f"linear probe {name} accuracy: {record[f'linear_probe_{name}_accuracy']}")
    validation = len(probe_splits["validation"][1]) if "validation" in probe_splits else 0
    record.update(
        probe="standardized features, logistic regression (sklearn, C=1), per pooling (grid<k>: foundation_pooling "
        "'grid', a k x k grid)",
        dataset=EMBEDDED_MNIST,
        train_images=len(train[1]),
        command=f"python training/pretrain_foundation.py --probe_only --validation_size {validation} "
        f"--output_dir {folder}",
    )
    (folder / "linear_probe.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"recorded in {folder / 'linear_probe.json'}")


if __name__ == "__main__":
    main()
