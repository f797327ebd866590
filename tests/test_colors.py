"""The 11-term colour naming table derived from the XKCD survey."""
import numpy as np
import pytest

from ndjax.probes import colors

# Unambiguous examples of each basic term (CSS / X11 definitions of the colour names).
PURE = {
    'red': [(255, 0, 0), (200, 10, 20)], 'green': [(0, 255, 0), (0, 128, 0)],
    'blue': [(0, 0, 255), (0, 0, 128)], 'white': [(255, 255, 255), (250, 250, 250)],
    'black': [(0, 0, 0), (10, 10, 10)], 'grey': [(128, 128, 128), (169, 169, 169)],
    'orange': [(255, 165, 0), (255, 140, 0)], 'yellow': [(255, 255, 0), (250, 240, 30)],
    'purple': [(128, 0, 128), (102, 51, 153)], 'pink': [(255, 192, 203), (255, 105, 180)],
    'brown': [(139, 69, 19), (160, 82, 45)],
}


@pytest.mark.parametrize('term', sorted(PURE))
def test_pure_colours_get_their_term(term):
  image = np.array([PURE[term]], np.uint8)                    # (1, 2, 3)
  names = colors.name_colours(image)
  assert [colors.COLOUR_TERMS[i] for i in names.ravel()] == [term] * len(PURE[term])


def test_table_shape_dtype_and_every_term_used():
  table = colors.colour_table()
  assert table.shape == (32, 32, 32) and table.dtype == np.uint8
  assert set(np.unique(table)) == set(range(len(colors.COLOUR_TERMS)))
  assert len(colors.COLOUR_TERMS) == 11


def test_derivation_is_deterministic():
  np.testing.assert_array_equal(colors._derive_table(), colors._derive_table())
  np.testing.assert_array_equal(colors._derive_table(), colors.colour_table())


def test_name_colours_is_a_lookup_on_value_div_8():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (17, 9, 3)).astype(np.uint8)
  table = colors.colour_table()
  expected = np.array([[table[r // 8, g // 8, b // 8] for r, g, b in row] for row in image])
  np.testing.assert_array_equal(colors.name_colours(image), expected)


def test_table_is_swappable_and_checked():
  try:
    pink = colors.COLOUR_TERMS.index('pink')
    colors.set_colour_table(np.full((32, 32, 32), pink))
    assert (colors.name_colours(np.zeros((2, 2, 3), np.uint8)) == pink).all()
    with pytest.raises(ValueError):
      colors.set_colour_table(np.zeros((16, 16, 16)))
    with pytest.raises(ValueError):
      colors.set_colour_table(np.full((32, 32, 32), 11))
  finally:
    colors.set_colour_table(None)
  assert colors.COLOUR_TERMS[colors.name_colours(np.zeros((1, 1, 3), np.uint8))[0, 0]] == 'black'


def test_rejects_non_uint8_images():
  with pytest.raises(ValueError):
    colors.name_colours(np.zeros((2, 2, 3), np.float32))
