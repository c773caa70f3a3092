"""Train vidiff's default text-to-video model from scratch on procedural clips, on the CPU.

    python -m train.train --out /tmp/shapes-t2v --work /tmp/shapes-work        # the shipped model (about 50 min, 2 cores)
    python -m train.train --out /tmp/tiny --preset smoke                       # a seconds-long run of the same code

Stages, all with vidiff's own classes (the result is an ordinary diffusers-format TextToVideoSDPipeline folder):

1. data: ``train.data`` clips of the training combinations (seeded) and a CLIP-format tokenizer of their words;
2. ``AutoencoderKL`` (4x downsampling, 4 latent channels) on single frames: L1 + MSE + a small KL term;
3. latents of every clip (posterior means), their scaling factor (1 / std) and range;
4. ``UNet3DConditionModel`` on v-prediction with a cosine noise schedule shifted to lower SNR (``snr_shift``),
   min-SNR weighting, 10% empty captions (for classifier-free guidance), an auxiliary frame-position probe and an
   exponential moving average of the weights, reading a ``CLIPTextModel`` that keeps its seeded random
   initialisation (``text_lr_scale`` > 0 trains it too);
5. ``TextToVideoSDPipeline(...).save_pretrained(out)`` with a ``DDIMScheduler`` matching the training schedule.

The same seed and thread count give the same checkpoint. Progress goes to stdout (one line per ``log_every`` steps).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .tokenizer import check_tokenizer, special_ids, write_tokenizer


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2
    size: int = 32  # frame height and width in pixels
    frames: int = 8
    clips: int = 8000  # training clips (each used for the VAE's frames and, as latents, for the denoiser)
    # autoencoder
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 700
    vae_batch: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-5
    vae_fg_weight: float = 4.0  # extra loss weight on the shape's pixels (a few % of the frame)
    latent_channels: int = 4
    # text encoder + denoiser
    text_hidden: int = 64
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64)
    unet_head_dim: int = 8
    unet_steps: int = 2000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.998
    uncond_prob: float = 0.1
    # the text encoder's learning rate as a fraction of unet_lr, without weight decay; 0 (default): its random init
    # stays frozen. Trained at the full rate it collapsed the words the denoiser did not use yet (shape, motion) onto
    # one another (relative change of the states 0.3 -> 0.06 between "moving left" and "moving right" in 1000 steps).
    text_lr_scale: float = 0.0
    min_snr_gamma: float = 5.0
    fg_weight: float = 4.0  # extra diffusion-loss weight on the latent pixels the shape covers (a few % of them)
    temporal_dropout: bool = False  # the temporal convolutions' dropout (p=0.1, fixed by the architecture) while training
    t_power: float = 0.75  # timestep sampling: T * u ** t_power (below 1: more high-noise steps)
    # noise schedule: the cosine schedule's SNR / snr_shift^2. The shapes are small and high-contrast, so on the plain
    # schedule they show through the noise already at t ~ 950 (x0 error 0.66 at t=999, 0.22 at 950, 0.08 at 900):
    # the layout, and with it the direction of motion, was decided in the first two or three sampling steps, from the
    # noise rather than the caption. Shifted by 4, that window spans t ~ 640-999.
    snr_shift: float = 4.0
    # auxiliary loss: a linear probe on the first down block's pooled features predicts each frame's index. Frame
    # position helps the denoiser only together with the motion word (averaged over the captions the clips' mean is
    # static), so neither is learnt alone: without the probe the features never encode the frame index (R^2 ~ 0 after
    # 1000 steps) and the motion word is ignored; with it they do within a few hundred steps (R^2 > 0.99).
    position_weight: float = 0.1
    log_every: int = 25
    save_every: int = 0  # also write the EMA pipeline to WORK/checkpoint-STEP every this many steps (0: never)


PRESETS = {
    "default": {},
    "smoke": dict(clips=32, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=4, warmup=1, log_every=1,
                  vae_channels=(8, 16, 16), unet_channels=(16, 32), text_hidden=32, text_layers=1, unet_head_dim=4),
}


class Log:
    def __init__(self):
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def __call__(self, msg: str) -> None:
        wall, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
        print(f"[{wall:7.1f}s wall {cpu:7.1f}s cpu] {msg}", flush=True)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ------------------------------------------------------------------------------------------------ data
def make_clips(cfg: TrainConfig, log: Log) -> tuple[np.ndarray, list[str]]:
    """(clips uint8 (n, f, h, w, 3), captions), rendered in chunks."""
    specs = data.sample_specs(cfg.clips, seed=cfg.seed, split="train")
    clips = np.empty((len(specs), cfg.frames, cfg.size, cfg.size, 3), dtype=np.uint8)
    for i in range(0, len(specs), 500):
        clips[i : i + 500] = np.round(data.render(specs[i : i + 500], cfg.size, cfg.frames) * 255)
    log(f"data: {len(specs)} clips of {cfg.frames}x{cfg.size}x{cfg.size}, {len(data.TRAIN_COMBOS)} training combinations")
    return clips, [s.caption for s in specs]


def to_pixels(clips_u8: np.ndarray) -> torch.Tensor:
    """uint8 (..., h, w, 3) -> float (..., 3, h, w) in [-1, 1]."""
    x = torch.from_numpy(clips_u8).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -3)


# ------------------------------------------------------------------------------------------------ models
def build_vae(cfg: TrainConfig):
    from vidiff import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=8,
        sample_size=cfg.size, mid_block_add_attention=False,
    )  # fmt: skip


def build_text_encoder(cfg: TrainConfig, tokenizer_dir: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    ids = special_ids(tokenizer_dir)
    config = CLIPTextConfig(
        vocab_size=ids["vocab_size"], hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
        projection_dim=cfg.text_hidden, num_hidden_layers=cfg.text_layers, num_attention_heads=4,
        max_position_embeddings=16, hidden_act="quick_gelu", bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
    )  # fmt: skip
    return CLIPTextModel(config)


def build_unet(cfg: TrainConfig):
    from vidiff import UNet3DConditionModel

    n = len(cfg.unet_channels)
    return UNet3DConditionModel(
        sample_size=cfg.size // 2 ** (len(cfg.vae_channels) - 1), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        block_out_channels=cfg.unet_channels, layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_head_dim,
    )  # fmt: skip


def build_scheduler(clip_range: float, snr_shift: float = 1.0):
    """DDIM on v-prediction over the cosine schedule, its signal-to-noise ratio divided by ``snr_shift ** 2`` at every
    timestep (stored as ``trained_betas``, which any diffusers scheduler reads; 1: the plain cosine schedule)."""
    from vidiff import DDIMScheduler

    common = dict(num_train_timesteps=1000, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=True,
                  clip_sample_range=clip_range, set_alpha_to_one=True, steps_offset=0)
    cosine = DDIMScheduler(beta_schedule="squaredcos_cap_v2", **common)
    if snr_shift == 1.0:
        return cosine
    ab = cosine.alphas_cumprod.double()
    ab = ab / (ab + snr_shift**2 * (1 - ab))  # snr -> snr / shift^2
    betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
    return DDIMScheduler(trained_betas=betas.clamp(max=0.999).tolist(), **common)


# ------------------------------------------------------------------------------------------------ stage 1: VAE
def foreground_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """1 on the background (the median border colour of each frame), ``1 + weight`` on the shape: (b 1 h w)."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # b 3 4w
    bg = border.median(dim=-1).values[..., None, None]  # b 3 1 1
    return 1.0 + weight * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.05).float()


def init_small_posterior_std(vae, logvar: float = -6.0) -> None:
    """Start the posterior's log-variance at ``logvar`` (std 0.05) so that sampled latents carry signal from step 0."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:].zero_()
        vae.quant_conv.bias[c:].fill_(logvar)


def train_vae(cfg: TrainConfig, clips: np.ndarray, log: Log):
    vae = build_vae(cfg).train()
    init_small_posterior_std(vae)
    log(f"vae: {vae.num_parameters() / 1e6:.2f}M parameters, {cfg.vae_steps} steps of {cfg.vae_batch} frames")
    frames = clips.reshape(-1, cfg.size, cfg.size, 3)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    running = 0.0
    for step in range(cfg.vae_steps):
        set_lr(opt, lr_at(step, cfg.vae_steps, cfg.warmup, cfg.vae_lr))
        x = to_pixels(frames[rng.integers(len(frames), size=cfg.vae_batch)])  # b 3 h w
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        err = recon - x
        rec = (foreground_weights(x, cfg.vae_fg_weight) * (err.abs() + err.pow(2))).mean()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running = rec.item() if step == 0 else 0.95 * running + 0.05 * rec.item()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step:5d}  recon {running:.4f}  kl {kl.item():.2f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_clips(vae, clips: np.ndarray, batch: int = 512) -> torch.Tensor:
    """Posterior means of every frame: (n, c, f, h/4, w/4), unscaled."""
    n, f = clips.shape[:2]
    flat = clips.reshape(n * f, *clips.shape[2:])
    out = torch.cat([vae.encode(to_pixels(flat[i : i + batch])).latent_dist.mean for i in range(0, len(flat), batch)])
    return out.reshape(n, f, *out.shape[1:]).transpose(1, 2).contiguous()  # n c f h w


@torch.no_grad()
def vae_check(vae, cfg: TrainConfig, n: int = 96) -> str:
    """The evaluator's detector on VAE reconstructions of held-out clips: what the decoder can show at best."""
    from .evaluate import check_detector

    def reconstruct(clips: np.ndarray) -> np.ndarray:
        x = to_pixels(np.round(clips * 255).astype(np.uint8)).flatten(0, 1)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1).add(1).div(2)
        return y.movedim(1, -1).reshape(clips.shape).numpy()

    report = check_detector(n, cfg.size, cfg.frames, transform=reconstruct)["held_out"]
    return ", ".join(f"{k} {report[k]:.0%}" for k in ("colour", "shape", "motion", "background"))


@torch.no_grad()
def vae_psnr(vae, clips: np.ndarray, n: int = 256) -> float:
    x = to_pixels(clips[:n, 0])
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (x + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ------------------------------------------------------------------------------------------------ stage 2: denoiser
class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay, self.steps = copy.deepcopy(module).eval().requires_grad_(False), decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p, 1 - decay)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


class PositionProbe(torch.nn.Module):
    """Training-only head: the pooled ``down_blocks[0]`` features of each frame -> its index in [-1, 1] (not saved)."""

    def __init__(self, unet):
        super().__init__()
        self.head = torch.nn.Linear(unet.config.block_out_channels[0], 1)
        self.features: torch.Tensor | None = None
        self.handle = unet.down_blocks[0].register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.features = output[0]  # (b f) c h w

    def loss(self, frames: int) -> torch.Tensor:
        pooled = self.features.mean(dim=(2, 3))  # (b f) c
        target = torch.linspace(-1, 1, frames, device=pooled.device).repeat(pooled.shape[0] // frames)
        return F.mse_loss(self.head(pooled).squeeze(-1), target)


def latent_foreground(clips: np.ndarray, factor: int, batch: int = 1000) -> torch.Tensor:
    """Where the shape is, at latent resolution: (n, 1, f, h/factor, w/factor) bool (any covered pixel in the cell)."""
    out = []
    for i in range(0, len(clips), batch):
        x = to_pixels(clips[i : i + batch]).flatten(0, 1)  # (b f) 3 h w
        fg = foreground_weights(x, 1.0) > 1.0  # (b f) 1 h w
        fg = F.max_pool2d(fg.float(), factor) > 0
        out.append(fg.unflatten(0, (-1, clips.shape[1])).transpose(1, 2))
    return torch.cat(out)


def diffusion_loss(unet, text_encoder, scheduler, latents, ids, gamma: float, gen: torch.Generator, t_power: float = 1.0,
                   pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """v-prediction loss (x0 weight min(snr + 1, gamma)) on a batch of scaled latents (b c f h w).

    Timesteps are T * u ** t_power for uniform u: 1 is uniform, below 1 favours high noise. ``pixel_weight``
    (b 1 f h w) weighs each latent pixel (the shape's more than the background)."""
    b = latents.shape[0]
    n = scheduler.config.num_train_timesteps
    t = (torch.rand(b, generator=gen).pow(t_power) * n).long().clamp(max=n - 1)
    noise = torch.randn(latents.shape, generator=gen)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t)
    pred = unet(noisy, t, text_encoder(ids)[0]).sample
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    # v-loss = (snr + 1) x the x0-loss; cap that x0 weight at gamma (low noise) and keep it whole at high noise,
    # where the layout, colour and motion of the clip are decided
    weight = (gamma / (snr + 1)).clamp(max=1.0)
    err = (pred - target).pow(2)
    if pixel_weight is not None:
        err = err * pixel_weight
    return (weight * err.mean(dim=(1, 2, 3, 4))).mean()


def train_denoiser(cfg: TrainConfig, latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor, scheduler,
                   text_encoder, log: Log, checkpoint=None, foreground: torch.Tensor | None = None):
    unet = build_unet(cfg).train()
    if not cfg.temporal_dropout:
        for module in unet.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    text_encoder.train()
    log(f"unet: {unet.num_parameters() / 1e6:.2f}M parameters, text encoder: {text_encoder.num_parameters() / 1e6:.2f}M; "
        f"{cfg.unet_steps} steps of {cfg.unet_batch} clips")
    ema_unet, ema_text = EMA(unet, cfg.ema_decay), EMA(text_encoder, cfg.ema_decay)  # (copied before the probe's hook)
    probe = PositionProbe(unet) if cfg.position_weight else None
    text_encoder.requires_grad_(cfg.text_lr_scale > 0)
    groups = [{"params": list(unet.parameters()) + (list(probe.parameters()) if probe else []), "lr_scale": 1.0, "weight_decay": 0.01}]
    if cfg.text_lr_scale > 0:
        groups.append({"params": list(text_encoder.parameters()), "lr_scale": cfg.text_lr_scale, "weight_decay": 0.0})
    params = [q for g in groups for q in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.unet_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    running = None
    for step in range(cfg.unet_steps):
        set_lr(opt, lr_at(step, cfg.unet_steps, cfg.warmup, cfg.unet_lr))
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_prob
        batch_ids[drop] = empty_ids
        pixel_weight = 1.0 + cfg.fg_weight * foreground[idx].float() if foreground is not None and cfg.fg_weight else None
        loss = diffusion_loss(unet, text_encoder, scheduler, latents[idx], batch_ids, cfg.min_snr_gamma, gen, cfg.t_power, pixel_weight)
        position = probe.loss(cfg.frames) if probe is not None else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + cfg.position_weight * position).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        now = torch.stack([loss.detach(), position.detach()])
        running = now if running is None else 0.98 * running + 0.02 * now
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step:5d}  loss {running[0]:.4f}" + (f"  position {running[1]:.4f}" if probe is not None else ""))
        if checkpoint is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.unet_steps:
            checkpoint(step + 1, ema_unet.module, ema_text.module)
    return ema_unet.module, ema_text.module


# ------------------------------------------------------------------------------------------------ main
def train(cfg: TrainConfig, out: Path, work: Path, vae_from: Path | None = None) -> Path:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    log = Log()
    log(f"config: {json.dumps(dataclasses.asdict(cfg))}")
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = write_tokenizer(work / "tokenizer", data.vocabulary())
    check_tokenizer(tok_dir, data.vocabulary())
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    clips, captions = make_clips(cfg, log)

    if vae_from is None:
        vae = train_vae(cfg, clips, log)
        vae.save_pretrained(work / "vae")
    else:
        from vidiff import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_from).eval().requires_grad_(False)
        log(f"vae: loaded from {vae_from}")
    log(f"vae: reconstruction PSNR {vae_psnr(vae, clips):.1f} dB, detector on reconstructions {vae_check(vae, cfg)}")
    latents = encode_clips(vae, clips)
    scale = float(1.0 / latents.std())
    latents = latents * scale
    clip_range = round(float(latents.abs().max()) * 1.25, 1)
    vae.register_config(vae.config.replace(scaling_factor=scale), {})
    log(f"latents {tuple(latents.shape)}: scaling_factor {scale:.4f}, |max| {latents.abs().max():.2f} -> clip range {clip_range}")

    scheduler = build_scheduler(clip_range, cfg.snr_shift)
    ids, empty_ids = tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    torch.manual_seed(cfg.seed + 3)
    text_encoder = build_text_encoder(cfg, tok_dir)
    def checkpoint(step: int, unet, text_encoder) -> None:
        save(work / f"checkpoint-{step}", vae, text_encoder, tok_dir, unet, scheduler)
        log(f"saved {work / f'checkpoint-{step}'}")

    foreground = latent_foreground(clips, 2 ** (len(cfg.vae_channels) - 1))  # n 1 f h w, for the loss weights
    unet, text_encoder = train_denoiser(cfg, latents, ids, empty_ids, scheduler, text_encoder, log, checkpoint, foreground)
    save(out, vae, text_encoder, tok_dir, unet, scheduler)
    # provenance, and the clip length the CLI generates by default with this model (vidiff.cli reads "frames")
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
    log(f"saved {out} ({folder_size(out) / 2**20:.1f} MiB)")
    return out


def save(out: Path, vae, text_encoder, tok_dir: Path, unet, scheduler) -> None:
    from transformers import CLIPTokenizer

    from vidiff import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
                                 unet=unet, scheduler=scheduler)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out)
    # the tokenizer in CLIP's own file format (vocab.json + merges.txt), whatever transformers' version writes
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tok_dir, out / "tokenizer")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output pipeline folder (replaced if it exists)")
    p.add_argument("--work", default=None, help="scratch folder (tokenizer files); default: OUT.work")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vae-from", default=None, help="skip stage 1: load this AutoencoderKL folder (experiments)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields, e.g. unet_steps=500")
    args = p.parse_args(argv)
    cfg = TrainConfig(**PRESETS[args.preset])
    overrides = {"seed": args.seed, "threads": args.threads}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(TrainConfig)}:
            p.error(f"unknown config field {key!r}")
        overrides[key] = json.loads(value) if not value.isidentifier() else value
    cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None})
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    train(cfg, out, work, Path(args.vae_from) if args.vae_from else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
