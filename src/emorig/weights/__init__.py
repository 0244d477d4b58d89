"""Small weights this project trained itself on synthetic renders of the built-in head, shipped
so that ``emorig demo`` runs with nothing downloaded (``scripts/train_demo_weights.sh``
reproduces them)."""
