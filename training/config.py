"""Configuration dataclasses: one for the model, one per stage.

The model config is the model's only constructor argument and is stored in every checkpoint
as a plain dict, so a checkpoint alone rebuilds its model. Stage configs are filled from the
command line by :mod:`training.cli` (flags generated from these fields) or directly by tests,
and are never mutated afterwards. Every setting is declared once, here: architecture settings
only in :class:`PFViTConfig` (a stage changes them through ``arch``), run settings only in the
stage configs.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


STEMS = ("patch", "conv", "deepconv")
POKER_MODES = ("direct", "edit", "editor")


@dataclass
class PFViTConfig:
    """Architecture of one PF-ViT (encoder, separator, generator, head) and of the
    discriminator that trains it (sized with the model, built by :mod:`training.adversarial`).

    Args:
        image_size: side of the square RGB input in pixels.
        patch_size: side of one patch of encoder and generator.
        embed_dim, depth, num_heads: encoder width, number of blocks, attention heads.
        emotion_dim: rank k of the emotional subspace (z_e = z U Uᵀ, U is D×k).
        decoder_dim, decoder_depth, decoder_heads: the MAE-style generator.
        disc_dim, disc_depth, disc_heads, disc_patch_size: the ViT discriminator.
        mlp_ratio: hidden width of every MLP as a multiple of its block width.
        labels: class names in logit order; the number of classes K is ``len(labels)``
            (0 for a pre-training model, whose head is then an identity).
        mean, std: per-channel RGB normalisation of [0, 1] pixels.
        poker_mode: how G's output becomes the poker face. "direct": G(z_p + e_n), the face
            redrawn from tokens. "edit": x + G(z_p + e_n) - G(z), the generator's own change
            between its neutral and its faithful decode applied to the input, so every detail
            that G cannot redraw (texture, noise, fine identity) is kept (docs/pfvit.md).
            "editor": x + Ed(x, e_n - z_e), the change drawn at full resolution by a
            convolutional editor (:class:`~training.model.ExpressionEditor`) from the face and
            each token's shift to the neutral emotional component; trained by the editor
            stage (:class:`EditorConfig`) on a finished PF-ViT.
        stem: how the encoder turns pixels into tokens: "patch" (one linear projection per
            patch, the vanilla ViT), "conv" (3x3 stride-2 convolutions, :class:`ConvStem`) or
            "deepconv" (each stride-2 convolution followed by a 3x3 stride-1 one).
        greyscale: the encoder reads the luma only (models trained on grey photos).
        poker_luma: "edit" mode applies only the luma of G's change, the same in every channel.
            A model trained on grey photos never learned what its change does to colour, and
            on a colour photo the chroma part of that change is coloured speckle.
        editor_width, editor_cond_dim: the editor's first-level channels and the channels of
            its per-token shift ("editor" mode).
    """

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    emotion_dim: int = 64
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 8
    disc_dim: int = 192
    disc_depth: int = 4
    disc_heads: int = 3
    disc_patch_size: int = 16
    mlp_ratio: float = 4.0
    labels: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    poker_mode: str = "direct"
    stem: str = "patch"
    greyscale: bool = False
    poker_luma: bool = False
    editor_width: int = 16
    editor_cond_dim: int = 16

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.poker_mode not in POKER_MODES:
            raise ValueError(f"poker_mode must be one of {POKER_MODES}, got {self.poker_mode!r}")
        if self.editor_width < 1 or self.editor_cond_dim < 1:
            raise ValueError("editor_width and editor_cond_dim must be positive")
        if self.poker_luma and self.poker_mode != "edit":
            raise ValueError("poker_luma applies to poker_mode='edit' only")
        for size_name in ("patch_size", "disc_patch_size"):
            if self.image_size % getattr(self, size_name):
                raise ValueError(f"image_size {self.image_size} is not a multiple of {size_name}")
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads or self.disc_dim % self.disc_heads:
            raise ValueError("every width must be a multiple of its number of heads")
        if not 0 < self.emotion_dim < self.embed_dim:
            raise ValueError(f"emotion_dim must lie in (0, {self.embed_dim}), got {self.emotion_dim}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")
        self.labels = list(self.labels)
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]

    @property
    def num_classes(self) -> int:
        """K, the number of emotion classes: ``len(labels)``."""
        return len(self.labels)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PFViTConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        data = dict(data)
        # Checkpoints written before K was derived from the labels also stored it.
        legacy_classes = data.pop("num_classes", None)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown PFViTConfig keys: {sorted(unknown)}")
        if legacy_classes is not None and data.get("labels") and legacy_classes != len(data["labels"]):
            raise ValueError(f"{len(data['labels'])} labels for {legacy_classes} classes")
        return cls(**data)

    @classmethod
    def parse_overrides(cls, text: str) -> dict[str, Any]:
        """``"poker_mode=edit,image_size=112"`` -> typed keyword overrides of this config.

        Raises:
            ValueError: an unknown field, a field that is no scalar, or a value of the wrong type.
        """
        hints = typing.get_type_hints(cls)
        scalar = {f.name: hints[f.name] for f in fields(cls) if hints[f.name] in (int, float, str, bool)}
        out: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in scalar:
                raise ValueError(
                    f"architecture override {part!r}: use NAME=VALUE with NAME in {', '.join(sorted(scalar))}"
                )
            try:
                out[key] = _parse_bool(value) if scalar[key] is bool else scalar[key](value.strip())
            except ValueError as exc:
                raise ValueError(f"architecture override {part!r}: {exc}") from exc
        return out


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class RunConfig:
    """What every training stage shares.

    Args:
        out_dir: run folder (checkpoints, ``log.jsonl``, evaluation files).
        data: training data as a data spec, ``KIND:PATH[,key=value...]`` or ``KIND:key=value,...``
            (:mod:`training.data.spec`; kinds: rafdb, ferplus, affectnet, affectnet7, affectnet8,
            folder, rendered, synthetic).
        model: size factory (micro, tiny, small, base) when no checkpoint gives the architecture.
        arch: overrides of :class:`PFViTConfig` fields as ``name=value,...`` (e.g.
            ``image_size=112,poker_mode=edit``), applied on top of the factory or the
            initialising checkpoint; the data is built at the resulting ``image_size``.
        sampler: "distributed" (every item once per epoch, shuffled) or "balanced" (classes
            drawn equally often, with replacement; for skewed sets such as AffectNet). Both
            depend only on (seed, epoch), so resuming replays the same batches.
        epochs, batch_size: per process; the effective batch is ``batch_size * world_size``.
        blr: base learning rate; the actual rate is ``blr * effective_batch / 256``.
        min_lr_ratio: cosine floor as a fraction of the peak rate.
        warmup_epochs: linear warm-up length (may be fractional).
        weight_decay: AdamW decay on weight matrices only.
        grad_clip: max global gradient norm (0 = off).
        num_workers: data-loader workers per process.
        seed: base seed; each process adds its rank.
        resume: checkpoint to resume from exactly (model, optimizers, schedulers, RNG, step).
        max_steps_per_epoch: cap on steps per epoch (0 = the whole epoch); for smoke runs.
        threads: CPU threads per process (0 = all cores shared among local processes).
        device: "auto", "cpu" or "cuda".
        save_every: keep ``checkpoint-<epoch>.pt`` every this many epochs (``last.pt`` always).
        progress: show tqdm bars (rank 0 only).
    """

    out_dir: str = "runs/pfvit"
    data: str = ""
    model: str = "micro"
    arch: str = ""
    sampler: Literal["distributed", "balanced"] = "distributed"
    epochs: int = 1
    batch_size: int = 64
    blr: float = 1e-3
    min_lr_ratio: float = 0.01
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    num_workers: int = 0
    seed: int = 0
    resume: str = ""
    max_steps_per_epoch: int = 0
    threads: int = 0
    device: str = "auto"
    save_every: int = 0
    progress: bool = True


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """MAE pre-training of encoder + generator on unlabeled faces.

    Args:
        mask_ratio: fraction of patches hidden from the encoder.
        norm_pix_loss: regress per-patch normalised pixels (MAE's option). Off by default
            because the PF-ViT stage needs the generator to emit real pixels.
    """

    out_dir: str = "runs/pretrain"
    blr: float = 1.5e-4
    warmup_epochs: float = 40.0
    epochs: int = 300
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False


@dataclass(frozen=True)
class LossWeights:
    """Weights of the PF-ViT stage's loss terms (see ``docs/pfvit.md`` for the reasons)."""

    cls: float = 1.0
    rec: float = 1.0
    adv_poker: float = 0.05
    adv_rec: float = 0.02
    cyc_neutral: float = 0.2
    cyc_residue: float = 0.5
    poker_sup: float = 1.0


@dataclass(frozen=True)
class CriticRunConfig(RunConfig):
    """What a stage with a discriminator D shares: how D learns (the PF-ViT stage; the editor
    stage when its adversarial weight is on).

    Args:
        gan: "hinge" or "nonsat" (non-saturating logistic).
        r1_gamma: R1 penalty weight on real images (0 = off).
        r1_every: lazy R1, applied every this many discriminator steps (and scaled up to match).
        d_blr: discriminator base learning rate.
        d_betas: discriminator Adam betas.
    """

    gan: Literal["hinge", "nonsat"] = "hinge"
    r1_gamma: float = 0.0
    r1_every: int = 4
    d_blr: float = 2.5e-4
    d_betas: tuple[float, float] = (0.5, 0.999)


@dataclass(frozen=True)
class TrainConfig(CriticRunConfig):
    """The PF-ViT separation stage (classification + generation + adversarial + cycles).

    D's settings (``gan``, ``r1_gamma``, ``r1_every``, ``d_blr``, ``d_betas``) are
    :class:`CriticRunConfig`'s.

    Args:
        init: MAE pre-training checkpoint whose encoder and generator start this stage (and
            whose architecture is used); or a PF-ViT stage checkpoint, whose whole model and D
            continue under this config's new schedule (a warm restart); empty = random init of
            ``model``.
        val_data: validation data spec; empty = the ``val`` split of ``data``.
        weights: loss weights.
        mixup_alpha: Beta(alpha, alpha) mixup (0 = off).
        label_smoothing: for hard labels.
        eval_every: evaluate every this many epochs (0 = only at the end).
        separation: train E, S, G, H and D together (the PF-ViT stage proper). Off, the same
            stage trains E, S_e and H on the classification term alone, with the same data,
            sampler, optimizer and schedule: the plain-ViT side of the separation ablation.
        poker_sup_loss: the supervised poker-face distance (items with a true poker face):
            "l1" (pixels and image gradients) or "l2" (their squared errors). An expression
            moves a small part of the face, so the true change is zero almost everywhere: L1's
            optimum under uncertainty is the median change, zero, while L2's is the mean
            change, and L2 is what PSNR against the true poker face measures.
    """

    out_dir: str = "runs/train"
    init: str = ""
    val_data: str = ""
    blr: float = 2.5e-4
    warmup_epochs: float = 5.0
    epochs: int = 60
    weights: LossWeights = field(default_factory=LossWeights)
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    eval_every: int = 1
    poker_sup_loss: Literal["l1", "l2"] = "l1"
    separation: bool = True

    def __post_init__(self) -> None:
        if self.poker_sup_loss not in ("l1", "l2"):
            raise ValueError(f"poker_sup_loss must be 'l1' or 'l2', got {self.poker_sup_loss!r}")


@dataclass(frozen=True)
class EditorConfig(CriticRunConfig):
    """The editor stage: a finished PF-ViT (``init``, from the PF-ViT stage) gets an
    :class:`~training.model.ExpressionEditor` ("editor" poker mode), and only the editor trains;
    encoder, separator, head and generator stay as they are, so recognition does not move.

    With ``adv`` above 0 a critic (``d_arch``: :class:`~training.editing.PatchDiscriminator` or
    :class:`~training.editing.FaceDiscriminator`) learns beside it, on the batches' photographs:
    real are the photos whose class is neutral, fake the poker faces of the photos of any other
    class. Its settings (``gan``, ``r1_gamma``, ``r1_every``, ``d_blr``, ``d_betas``) are
    :class:`CriticRunConfig`'s; their defaults are the PF-ViT stage's, not values chosen for
    this stage (docs/pfvit.md).

    Args:
        init: the PF-ViT stage checkpoint to start from (required).
        poker_sup: weight of the squared distance (pixels and image gradients, model space) of
            the poker face to the true one, on items that have one (rendered faces).
        cyc_neutral: weight of the frozen recogniser's cross-entropy to "neutral" on the poker
            faces of items without a true poker face (photographs).
        sparsity: weight of the mean absolute change (0-1 pixel units) on those same items: an
            expression lives in a small part of the face, and a change spread over all of it is
            the cheapest way to push any classifier anywhere.
        poker_data: data spec of faces with true poker faces (``rendered:n=4800``) mixed into
            ``data`` (photographs); empty when ``data`` itself has them.
        poker_repeat: how many times each ``poker_data`` face appears in one epoch.
        adv: weight of the editor's adversarial term on the poker faces of expressive
            photographs (0 = no critic: the stage as it was before it had one).
        d_steps: critic steps per editor step, on the same batch (the D:G step ratio).
        d_width: channels of the critic's first convolution (the next two have 2x and 4x).
        d_pool: the critic judges each face by the mean of its patches' logits, not each patch
            on its own (:class:`~training.editing.PatchDiscriminator`).
        d_arch: "patch", the patch critic, or "face", a critic whose features see the whole
            face and give one verdict (:class:`~training.editing.FaceDiscriminator`).
        d_warmup: the first this many steps train the critic alone, on the poker faces of the
            editor as it is (the editor neither learns nor changes); with ``editor_init``, the
            critic starts the game knowing that editor's faces.
        editor_init: an editor stage checkpoint whose editor this stage starts from (its
            adversarial fine-tuning), instead of a fresh editor that changes nothing.
        poker_translate: largest random shift (fraction of the side) of each face that has a
            true poker face, applied to the face and its poker face alike
            (:func:`~training.editing.jitter_poker_pairs`); 0 with ``poker_scale`` (1, 1) = none.
        poker_scale: zoom range of that same random affine.
        identity: weight of the identity term on photographs: the mean absolute difference
            between the frozen model's residue z_p of the poker face and that of the input.
            PF-ViT trains its residue to hold what is not the expression (the paper's cycle
            residue), so matching it keeps the person, the pose, the face shape and where the
            eyes are, without pinning any pixel. A low-pass pixel term was the alternative;
            it was left out because ``sparsity`` already holds the pixels, and a blurred-image
            match fights the critic exactly where an open mouth must close.
    """

    out_dir: str = "runs/editor"
    init: str = ""
    poker_data: str = ""
    poker_repeat: int = 1
    arch: str = "poker_mode=editor,poker_luma=false"
    epochs: int = 2
    blr: float = 8e-3
    warmup_epochs: float = 0.1
    weight_decay: float = 0.01
    poker_sup: float = 5.0
    cyc_neutral: float = 0.05
    sparsity: float = 0.5
    adv: float = 0.0
    d_steps: int = 1
    d_width: int = 32
    d_pool: bool = False
    d_arch: Literal["patch", "face"] = "patch"
    d_warmup: int = 0
    editor_init: str = ""
    identity: float = 0.0
    poker_translate: float = 0.0
    poker_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.d_warmup < 0:
            raise ValueError(f"d_warmup counts steps, not below 0: got {self.d_warmup}")
        if self.d_pool and self.d_arch != "patch":
            raise ValueError("d_pool averages a patch critic's verdicts; the face critic gives one already")
        if self.d_warmup and not self.adv:
            raise ValueError("d_warmup trains the critic, and there is none at adv 0")
        if self.d_steps < 1 or self.d_width < 1:
            raise ValueError(f"d_steps and d_width must be positive, got {self.d_steps} and {self.d_width}")
        if min(self.adv, self.identity) < 0:
            raise ValueError(f"adv and identity are weights, not below 0: got {self.adv} and {self.identity}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of one checkpoint.

    Args:
        checkpoint: the checkpoint file.
        data: evaluation data spec (its ``val``/``test`` split, see ``split``).
        split: which split to build.
        out_dir: where ``metrics.json``, ``confusion.png`` and ``samples.png`` go.
        batch_size, num_workers, threads, device: as in :class:`RunConfig`.
        max_batches: cap on batches (0 = all).
    """

    checkpoint: str
    data: str
    split: str = "test"
    out_dir: str = "runs/eval"
    batch_size: int = 64
    num_workers: int = 0
    threads: int = 0
    device: str = "auto"
    max_batches: int = 0


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export of one checkpoint into a model folder with its card.

    Args:
        checkpoint: the checkpoint file.
        out_dir: model folder (``models/<name>``).
        name, version, license, description: card fields.
        metrics: evaluation ``metrics.json`` whose numbers go into the card (optional).
        data: data spec whose images feed the parity check (optional).
        opset: ONNX opset (17 or later).
        poker_face: also export the poker-face graph.
        fp16: write fp16 graphs (float16 weights and arithmetic, float32 input and outputs),
            checked against the fp32 graphs at export (``training.fp16``).
        mirror_average: the recognition graph answers the mean over each face and its mirror
            image (test-time augmentation inside the graph, twice the recognition cost).
        poker_luma: the poker-face graph applies only the luma of the generator's change
            (:class:`PFViTConfig`; for models trained on grey photos).
    """

    checkpoint: str
    out_dir: str
    name: str = "pfvit"
    version: str = "0.1.0"
    license: str = "MIT"
    description: str = "PF-ViT facial-expression recognition and poker-face generation"
    metrics: str = ""
    data: str = ""
    opset: int = 17
    poker_face: bool = True
    fp16: bool = False
    mirror_average: bool = False
    poker_luma: bool = False
