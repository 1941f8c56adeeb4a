import pytest
import torch

from cyclelike.config import RunConfig
from cyclelike.nets import define_D, define_G


@pytest.mark.parametrize("arch", ["encdec", "unet"])
@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_generators_and_discriminators_build_and_run(arch, size):
    config = RunConfig(arch=arch, image_size=size, base_filters=4, d_filters=4)
    G, D = define_G(config), define_D(config, conditional=True)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        out = G(x)
        logits = D(out, x)
    assert out.shape == x.shape
    assert out.abs().max() <= 1.0  # tanh output, the range of the data
    assert logits.ndim == 4 and logits.shape[1] == 1 and logits.shape[-1] >= 2  # a grid of patches
    assert define_D(config, conditional=False)(x).shape == logits.shape


def test_encoder_goes_down_to_one_pixel_with_capped_widths():
    G = define_G(RunConfig(arch="unet", image_size=128, base_filters=64))
    widths = [block[0].out_channels for block in G.down]
    assert widths == [64, 128, 256, 512, 512, 512, 512]
    x = torch.zeros(1, 3, 128, 128)
    for block in G.down:
        x = block(x)
    assert x.shape[-2:] == (1, 1)
    assert all(block[0].kernel_size == (3, 3) for block in G.down)


def test_unet_differs_from_encdec_by_its_skips():
    unet = define_G(RunConfig(arch="unet", image_size=32))
    encdec = define_G(RunConfig(arch="encdec", image_size=32))
    assert unet.out[0].conv.in_channels == 2 * encdec.out[0].conv.in_channels


def test_fused_upsample_computes_the_same_function_and_gradients():
    torch.manual_seed(0)
    fused = define_G(RunConfig(arch="unet", image_size=32, base_filters=8, fused_upsample=True)).double()
    plain = define_G(RunConfig(arch="unet", image_size=32, base_filters=8, fused_upsample=False)).double()
    plain.load_state_dict(fused.state_dict())  # one set of weights serves both
    x = torch.randn(3, 3, 32, 32, dtype=torch.double)
    out_f, out_p = fused(x), plain(x)
    assert torch.allclose(out_f, out_p, atol=1e-12)
    (out_f**2).sum().backward()
    (out_p**2).sum().backward()
    for (name, pf), pp in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(pf.grad, pp.grad, atol=1e-10), name
