"""How the loop searches: the archive of every evaluated harness (``archive``), the choice of each
generation's parent (``parents``), and several candidates raced against one parent with a
multiple-comparison procedure (``race``). Pure logic and one append-only file; no Docker, no model."""
