"""Build settings setuptools cannot read from pyproject.toml: the one C extension.

opal/trust/_ed25519batch.c speeds up `opal ledger verify` (Ed25519 batch
verification). It is optional: if it does not compile, OPAL installs without
it and checks every signature one at a time with OpenSSL instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "opal.trust._ed25519batch",
            ["opal/trust/_ed25519batch.c"],
            extra_compile_args=["-O3", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
