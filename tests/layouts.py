"""Key -> shape of the standard blocks in published checkpoints (written from the
reference libraries' module structure), shared by the converter tests."""


def ln(prefix, w):
    """A LayerNorm."""
    return {f"{prefix}.weight": (w,), f"{prefix}.bias": (w,)}


def clip_block(prefix, w):
    """open_clip / OpenAI CLIP ResidualAttentionBlock (MLP ratio 4)."""
    return {**ln(f"{prefix}.ln_1", w),
            f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            **ln(f"{prefix}.ln_2", w),
            f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,)}


def timm_block(prefix, w):
    """timm ViT Block (MLP ratio 4, no layer scale)."""
    return {**ln(f"{prefix}.norm1", w),
            f"{prefix}.attn.qkv.weight": (3 * w, w), f"{prefix}.attn.qkv.bias": (3 * w,),
            f"{prefix}.attn.proj.weight": (w, w), f"{prefix}.attn.proj.bias": (w,),
            **ln(f"{prefix}.norm2", w),
            f"{prefix}.mlp.fc1.weight": (4 * w, w), f"{prefix}.mlp.fc1.bias": (4 * w,),
            f"{prefix}.mlp.fc2.weight": (w, 4 * w), f"{prefix}.mlp.fc2.bias": (w,)}
