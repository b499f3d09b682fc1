"""Two user models for `--model`, written for the comparison (docs/your_model.md): one the four
runners train identically, one they do not. Each trains on the task's data (the default --data).
"""
