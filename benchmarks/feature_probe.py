"""Can an object's position be read off the frozen encoder's features at all? Two probes.

Why: on the wide tabletop layout the chain's generated object boxes are as far from the objects
as always answering each object's mean position (docs/results.md), even on training frames. That
is either the encoder's features (the objects' places are not in them) or the decoder (they are,
and it does not learn to read them). Two probes from one camera's per-frame tokens to an
object's box centre separate the two: a ridge regression over all cells, flattened, and one
linear score per cell with a soft-argmax over the cells (`fit_cell_probe`). Both fit on four
in five episodes and are scored on the fifth (scenes they never saw), against the
mean-position answer.

    .venv/bin/python benchmarks/feature_probe.py --dataset outputs/tt4/dataset \
        --model tiny-effnet-s16 [--objects "red cube" bowl] [--camera agentview]

The features come from the training's own cache (`vla.training.frozen_features`), made if absent.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from common import machine_description

from data.reader import LeRobotDatasetReader
from vla.config import VLAConfig
from vla.model import VLAModel
from vla.training.frozen_features import FrozenImageFeatures
from vla.training.run import training_observation_spec


def box_centres(reader: LeRobotDatasetReader, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows with the object, (R, 2) its box centre in pixels) from `reasoning.objects`."""
    rows, centres = [], []
    for row, text in enumerate(reader.table.column("reasoning.objects").to_pylist()):
        for entry in json.loads(text):
            if entry["name"] == name:
                x0, y0, x1, y1 = entry["box"]
                rows.append(row)
                centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
    if not rows:
        raise SystemExit(f"{reader.root}: no frame labels an object named {name!r}")
    return np.asarray(rows), np.asarray(centres, dtype=np.float64)


def ridge(train_x: torch.Tensor, train_y: torch.Tensor, penalty: float) -> torch.Tensor:
    """(D+1, 2) weights of y ~ [x, 1] @ w with an L2 penalty on the non-bias rows."""
    design = torch.cat([train_x, torch.ones(len(train_x), 1, dtype=train_x.dtype)], dim=1)
    gram = design.T @ design
    gram[:-1, :-1] += penalty * torch.eye(gram.shape[0] - 1, dtype=gram.dtype)
    return torch.linalg.solve(gram, design.T @ train_y)


def error(guess: torch.Tensor, truth: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean distance in pixels between (R, 2) guessed and true centres over the selected rows."""
    return float((guess[rows] - truth[rows]).norm(dim=1).mean())


def fit_cell_probe(
    tokens: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int], image_px: int, steps: int
) -> torch.nn.Module:
    """A score per cell from that cell's token alone (one linear map shared by all cells), and
    the centre as the score-weighted mean of the cells' centres: what one attention head from a
    query that names the object can do. Trained on the centre error with Adam."""
    height, width = grid
    ys, xs = torch.meshgrid(
        (torch.arange(height) + 0.5) * image_px / height,
        (torch.arange(width) + 0.5) * image_px / width,
        indexing="ij",
    )
    cell_centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (N, 2), x then y

    class CellProbe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = torch.nn.Linear(tokens.shape[-1], 1)

        def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, 2)
            weights = self.score(batch).squeeze(-1).softmax(dim=1)  # (B, N)
            return weights @ cell_centres

    torch.manual_seed(0)
    probe = CellProbe()
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        picked = torch.randint(len(tokens), (256,))
        loss = (probe(tokens[picked]) - centres[picked]).norm(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="tiny-effnet-s16", help="a named config")
    parser.add_argument("--camera", default="agentview")
    parser.add_argument("--objects", nargs="+", default=["red cube", "blue cube", "bowl"])
    parser.add_argument("--held-out-every", type=int, default=5, help="every k-th episode")
    parser.add_argument("--penalty", type=float, default=1e4, help="ridge L2 penalty")
    parser.add_argument("--probe-steps", type=int, default=600, help="Adam steps, per-cell probe")
    args = parser.parse_args(argv)

    reader = LeRobotDatasetReader(args.dataset)
    config = VLAConfig.named(args.model)
    tower = VLAModel(config).backbone.image_encoder
    if tower is None:
        raise SystemExit(f"{args.model} has no timm tower: its features are not cached")
    spec = training_observation_spec(config, reader)
    features = FrozenImageFeatures.for_dataset(tower, reader, spec, config.image_size)
    if args.camera not in features.tables:
        raise SystemExit(f"no camera {args.camera!r}; the dataset has {sorted(features.tables)}")
    table = features.tables[args.camera]  # (F, N, C) float16
    grid = tower.token_grid()
    if grid is None:
        raise SystemExit(f"{args.model}'s tokens have no grid: the per-cell probe needs one")
    # box labels are in the stored frame's pixels, which may differ from the model's image_size
    image_px = next(camera.height for camera in spec.cameras if camera.name == args.camera)
    held_out_rows = np.zeros(reader.num_frames, dtype=bool)
    for number, episode in enumerate(reader.episodes):
        if number % args.held_out_every == args.held_out_every - 1:
            held_out_rows[episode.from_index : episode.to_index] = True

    print(f"{machine_description()}")
    print(
        f"{reader.root}, {args.model} ({table.shape[1]} tokens x {table.shape[2]} channels, "
        f"{args.camera}); held out: every {args.held_out_every}th episode, ridge penalty "
        f"{args.penalty:g}"
    )
    print(
        "| object | ridge, held-out scenes | ridge, its training rows | per-cell, held-out "
        "| per-cell, training rows | mean position, held-out |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.objects:
        rows, centres = box_centres(reader, name)
        tokens = table[torch.from_numpy(rows)]  # (R, N, C) float16
        y = torch.from_numpy(centres)  # (R, 2)
        train = torch.from_numpy(~held_out_rows[rows])
        prior = y[train].mean(0).expand_as(y)

        x = tokens.flatten(1).double()  # (R, N*C), each feature standardized on its own
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        weights = ridge(x[train], y[train], args.penalty)
        predicted = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ weights

        cells = tokens.float()  # (R, N, C), each channel standardized over all cells
        cells = (cells - cells[train].mean((0, 1))) / (cells[train].std((0, 1)) + 1e-6)
        probe = fit_cell_probe(cells[train], y[train].float(), grid, image_px, args.probe_steps)
        with torch.no_grad():
            located = probe(cells).double()
        print(
            f"| {name} | {error(predicted, y, ~train):.1f} px | {error(predicted, y, train):.1f} px "
            f"| {error(located, y, ~train):.1f} px | {error(located, y, train):.1f} px "
            f"| {error(prior, y, ~train):.1f} px |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
