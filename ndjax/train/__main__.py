from absl import app

from ndjax.train.main import main

app.run(main)
