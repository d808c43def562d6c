"""torch.compile with the inductor backend: a whole training step (forward, objective, backward) of an MoE is one
graph, and the generated code computes what the eager model computes. Chapter 08 tests the graph count for dense,
MoE and capacity-limited MoE with the cheaper aot_eager backend; this compiles for real (about 30 s on 2 cores)."""
import pytest
import torch

from moe_study.studies import get_preset
from moe_study.model import Decoder
from moe_study.trainer import compile_step, forward_backward, graph_breaks

CPU, FP32 = torch.device('cpu'), torch.float32


@pytest.mark.long
def test_inductor_compiles_an_moe_training_step_as_one_graph_with_the_eager_numbers():
    cfg = get_preset('smoke').model.replace(capacity_factor=1.0)          # a capacity that drops, beside routing
    torch.manual_seed(0)
    model = Decoder(cfg)
    for layer in model.layers: torch.nn.init.normal_(layer.mlp.router.weight, 0, 1.0)   # decisive: some are dropped
    batch = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1))
    x, y = batch[:, :-1], batch[:, 1:]
    assert graph_breaks(model, x, y, CPU, FP32) == 0

    eager = forward_backward(model, x, y, CPU, FP32)
    eager_grads = [p.grad.clone() for p in model.parameters()]
    drops = [m.routing_diagnostics()['drop_rate'] for m in model.moe_layers()]
    assert max(drops) > 0, drops
    model.zero_grad(set_to_none=True)
    compiled = compile_step(model, CPU, FP32)(x, y)                          # inductor, fullgraph=True
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()
