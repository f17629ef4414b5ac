"""What a run can build: one module per target behind one small interface (`base.Target`), chosen
from the table in `table.py`. The steps and the pipeline dispatch through that table; nothing else
knows a target by name."""
