"""Phase 3a SFT dataset generators and the mixer: pure functions returning records, thin CLIs.

python -m datagen.format_lock   format-lock pairs (say/math/facts/code), datagen/format_lock.py
python -m datagen.echo          echo pairs, optionally gibberish, datagen/echo.py
python -m datagen.mix           mix JSONL files (ratios, replay share), datagen/mix.py
"""
