"""Hand-traced outlines of the evaluation set's five boxed objects, for pixel truth (`camray.evaluation.segset`).

Traced by eye on the photos as scikit-image and matplotlib ship them (the same files as
`camray.evaluation.evalset.OBJECTS`), vertex by vertex at 2-6x zoom, then checked by overlaying each outline on its
photo. An outline is written as SVG writes a polygon's points, ``"x,y x,y ..."``, in pixel edges of the original
photo. Each object's `uncertain` regions cover what its tracer could not decide (out-of-focus fur against a blurred
cloth, a handlebar and mirror in front of shelves): the truth marks them 255, as VOC's annotators mark their void.

Whole objects, one polygon each: the cat (the photo cuts off its body), the espresso cup with its saucer and spoon,
the motorcycle (wheels solid), the rocket without its launch tower, Grace Hopper to the photo's lower edge.
"""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[float, float]


def points(text: str) -> tuple[Point, ...]:
    """``"x,y x,y ..."`` -> ((x, y), ...)."""
    pairs = [item.split(",") for item in text.split()]
    return tuple((float(x), float(y)) for x, y in pairs)


@dataclass(frozen=True)
class TracedObject:
    photo: str  # a file of `camray.samples.sample_photos`
    kind: str
    outline: str  # polygon points, see the module docstring
    uncertain: tuple[str, ...] = ()

    def polygon(self) -> tuple[Point, ...]:
        return points(self.outline)

    def uncertain_polygons(self) -> list[tuple[Point, ...]]:
        return [points(region) for region in self.uncertain]


TRACED = {
    "cat": TracedObject(
        "chelsea.png",
        "cat",
        (
            "0,142 2,140 10,132 18,120 24,108 28,88 30,68 32,48 34,28 38,12 40,0 398,0 378,28 362,52 358,64 "
            "360,80 362,104 362,128 358,156 354,176 346,196 338,212 330,228 326,244 334,270 342,300 0,300"
        ),
        uncertain=("322,236 350,236 372,300 326,300",),
    ),
    "coffee": TracedObject(
        "coffee.png",
        "coffee",
        (
            "160,77 137,84 115,95 96,114 87,136 80,168 77,205 79,241 85,273 96,305 115,336 137,359 165,377 "
            "196,389 237,395 270,394 311,393 347,391 384,382 411,368 434,350 452,327 465,300 475,273 479,241 "
            "477,214 470,182 456,155 438,127 418,109 424,84 422,70 411,66 400,70 397,68 384,45 361,27 330,20 "
            "300,18 274,18 242,20 214,24 192,30 183,39 176,55 173,77"
        ),
    ),
    "motorbike": TracedObject(
        "motorcycle_left.png",
        "motorbike",
        (
            "92,197 130,195 138,182 138,160 147,147 162,152 185,162 225,170 250,180 285,187 345,187 355,192 "
            "370,185 395,175 419,154 440,150 458,152 440,147 410,150 390,152 386,137 400,124 440,128 470,122 "
            "490,110 492,80 497,72 505,72 503,100 509,127 520,121 536,121 552,125 560,120 580,124 586,140 566,150 "
            "563,160 556,180 548,200 560,235 569,254 575,263 597,271 630,288 641,299 638,310 660,318 674,338 "
            "683,377 677,416 658,443 630,454 597,449 563,432 536,404 522,371 513,338 511,310 505,277 497,227 "
            "490,205 483,200 480,254 477,288 472,321 466,354 463,371 419,379 380,379 352,377 342,420 335,436 "
            "328,436 333,400 335,372 320,367 285,362 265,375 235,392 205,400 175,395 140,375 125,345 121,320 "
            "123,292 110,262 100,262 95,235 92,217"
        ),
        uncertain=("330,105 475,110 480,160 420,166 370,175 330,150",),
    ),
    "rocket": TracedObject(
        "rocket.jpg",
        "rocket",
        (
            "323,126.5 317,130.5 313.5,136.5 311.7,143 311.2,153 311.3,163 312.5,171.5 314.5,176.5 315,180 "
            "314,380 313,406 333,406 333,380 332.5,180 332.8,176.5 333.7,171.5 335,163 335.3,153 334.7,145 "
            "333,137.5 330,131.5"
        ),
    ),
    "officer": TracedObject(
        "grace_hopper.jpg",
        "person",
        (
            "165,75 175,60 195,42 215,31 242,23 260,22 280,28 300,33 320,37 340,42 360,65 370,87 372,110 372,135 "
            "367,160 365,175 362,185 362,210 360,245 355,270 347,290 337,305 330,313 353,340 393,360 440,377 "
            "473,393 493,413 507,433 512,455 512,600 12,600 13,560 17,493 20,433 30,400 47,380 80,367 133,353 "
            "173,333 200,313 202,310 195,300 180,290 170,275 165,255 162,225 160,200 162,175 162,165 156,150 "
            "155,115 157,100"
        ),
    ),
}
