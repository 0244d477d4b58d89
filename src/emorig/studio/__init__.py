"""``emorig studio``: edit a face in the browser (the state in :mod:`emorig.studio.session`,
the page in :mod:`emorig.studio.app`, which needs the optional ``emorig[studio]`` extra)."""
