"""Run the README's "Your own model" example exactly as written (the default probe set)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / 'README.md'
code = re.search(r'<!-- adapter example[^\n]*\n```python\n(.*?)```', README.read_text(), re.S).group(1)
exec(compile(code, str(README), 'exec'), {})
