"""``mageflow dashboard``: a small ASGI app (Starlette, in ``server``) over the store, with
live updates pushed by Server-Sent Events from ``wf.events()``. Plain HTML and vanilla JS
shipped as package data: no build step. Install with ``pip install 'mageflow-core[dashboard]'``;
``mageflow workers`` (in ``command``) needs nothing more than the core."""
