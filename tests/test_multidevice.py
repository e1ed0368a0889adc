"""Data-parallel training on 8 simulated CPU devices equals 1 device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax, pytest
    import randjax
    from randjax import data, models
    assert jax.device_count() == 8, jax.devices()
    ds = data.load("digits", val_fraction=0.1)
    def run(devices, batch_size=64):
        tx = optax.sgd(0.05, momentum=0.9)
        return randjax.fit(models.get("lenet300_100"), ds, tx, epochs=2,
                           batch_size=batch_size, devices=devices, progress=False)
    one, eight = run(jax.devices()[:1]), run(jax.devices())
    assert one.summary["num_devices"] == 1 and eight.summary["num_devices"] == 8
    # The remainder batch (1294 % 64 = 14 examples) cannot be sharded 8 ways
    # and runs replicated; every full batch is split over the devices.
    assert len(one.step_losses) == len(eight.step_losses) == 2 * 21
    np.testing.assert_allclose(one.step_losses, eight.step_losses, rtol=2e-4, atol=2e-5)
    for a, b in zip(jax.tree.leaves(one.state.trainable), jax.tree.leaves(eight.state.trainable)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    leaf = jax.tree.leaves(eight.state.trainable)[0]
    assert len(leaf.sharding.device_set) == 8
    # Batch norm: statistics of the global batch, whatever the sharding.
    bn = lambda devices: randjax.fit(models.get("conv2", width=0.125, batch_norm=True), ds,
                                     optax.adam(1e-3), epochs=1, batch_size=64,
                                     devices=devices, progress=False)
    bn_one, bn_eight = bn(jax.devices()[:1]), bn(jax.devices())
    np.testing.assert_allclose(bn_one.step_losses, bn_eight.step_losses, rtol=1e-3, atol=1e-4)
    for a, b in zip(jax.tree.leaves(bn_one.state.model_state),
                    jax.tree.leaves(bn_eight.state.model_state)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="does not divide evenly over 8 devices"):
        run(jax.devices(), batch_size=60)
    print("OK")
""")


def test_eight_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
