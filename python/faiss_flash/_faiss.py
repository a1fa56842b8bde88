"""FAISS's Python package, imported on first use.

batch_kmeans needs only numpy (or torch): `import faiss_flash` works where FAISS's Python
package is missing (a PyTorch-only environment), and the parts built on FAISS objects
(Kmeans, the index helpers) raise an ImportError naming the package when first used.
"""


class _LazyFaiss:
    def __getattr__(self, name):
        try:
            import faiss as module
        except ImportError as e:
            raise ImportError("faiss_flash: this feature needs FAISS's Python package "
                              "(Debian: python3-faiss)") from e
        return getattr(module, name)


faiss = _LazyFaiss()
