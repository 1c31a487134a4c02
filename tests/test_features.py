import pytest

from diffract_core.errors import FeatureIndexError, FeatureSpecError, SiteNotLoadedError
from diffract_core.features import FeatureRef, check_features, parse_features
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import TranscoderSet


def test_parse_several_specs() -> None:
    refs = parse_features("img:12:40684, txt:3:7\nimg:12:40684  img:0:1")
    assert refs == [FeatureRef("img", 12, 40684), FeatureRef("txt", 3, 7), FeatureRef("img", 0, 1)]
    assert str(refs[0]) == "img:12:40684" and refs[1].site == ("txt", 3)


@pytest.mark.parametrize("text", ["image:12:5", "img:12", "img:-1:5", "img:1:x", "  "])
def test_bad_specs_name_the_format(text: str) -> None:
    with pytest.raises(FeatureSpecError, match=r"stream:layer:feature, e.g. img:12:40684"):
        parse_features(text)


def test_features_are_checked_against_the_loaded_transcoders() -> None:
    transcoders = TranscoderSet.from_transcoders([random_transcoder("img", 2, d_model=8, d_features=32, time_dim=4)])
    check_features(parse_features("img:2:31"), transcoders)
    with pytest.raises(FeatureIndexError, match=r"img:2:32 is out of range.*32 features \(0..31\)"):
        check_features(parse_features("img:2:32"), transcoders)
    with pytest.raises(SiteNotLoadedError, match=r"no transcoder for site txt:2; this set holds \[img: 2\]"):
        check_features(parse_features("txt:2:0"), transcoders)
