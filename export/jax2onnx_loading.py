"""jax2onnx, loaded without leaving its patches of JAX behind.

jax2onnx's plugins patch ``jax.numpy`` when they are imported: ``jnp.cumsum`` becomes a
function that refuses a positional axis, so a user's ``jnp.cumsum(x, -1)`` raised TypeError
after the first export (or preflight check) of the session. The project hands jax2onnx a
jaxpr (``export.onnx_export``), never user code calling ``jax.numpy``, so it never needs
those patches: ``load`` imports jax2onnx and all its plugins and puts the namespaces back,
and ``namespaces_restored`` guards each conversion the same way.
"""
import contextlib
import functools

import jax

PATCHED_BY_PLUGINS = (jax.numpy, jax.lax)


@contextlib.contextmanager
def namespaces_restored(*modules):
    """Puts back every attribute of ``modules`` that the body replaced, added or removed."""
    modules = modules or PATCHED_BY_PLUGINS
    saved = [(module, dict(vars(module))) for module in modules]
    try:
        yield
    finally:
        for module, before in saved:
            for name in set(vars(module)) - set(before):
                delattr(module, name)
            for name, value in before.items():
                if name not in vars(module) or vars(module)[name] is not value:
                    setattr(module, name, value)


@functools.lru_cache(maxsize=1)
def load():
    """``(jax2onnx, its plugin_system)`` with every plugin imported (it takes seconds)."""
    with namespaces_restored():
        import jax2onnx
        from jax2onnx.plugins import plugin_system
        plugin_system.import_all_plugins()
    return jax2onnx, plugin_system
