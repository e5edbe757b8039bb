"""Calibration targets and their detection: checkerboards (OpenCV corner finder + sub-pixel refinement) and
ChArUco boards (partial views allowed, each corner identified by its id).

A board is described by its INNER corners, COLSxROWS, as ROS camera_calibration's `--size` and OpenCV's
`patternSize` count them (a board of 10 x 7 squares has 9 x 6 inner corners), and its square side in metres.
Board points lie in the board plane z = 0: corner (i, j) at (i * square, j * square), row by row, the order
OpenCV returns them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from edge.calibration.errors import CalibrationError

_BOARD_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Board:
    """A planar target: `cols` x `rows` inner corners, `square` metres apart; ChArUco when `dictionary` is set."""

    cols: int
    rows: int
    square: float
    dictionary: str | None = None  # e.g. "DICT_5X5_100" for a ChArUco board
    marker: float | None = None  # ChArUco marker side, metres

    def __post_init__(self) -> None:
        if self.cols < 2 or self.rows < 2:
            raise CalibrationError(f"board {self.cols}x{self.rows}: needs at least 2x2 inner corners")
        if not self.square > 0:
            raise CalibrationError(f"board square {self.square}: must be a positive length in metres")
        if self.dictionary is not None:
            if not hasattr(cv2.aruco, self.dictionary):
                raise CalibrationError(f"unknown ArUco dictionary '{self.dictionary}' (e.g. DICT_5X5_100)")
            if self.marker is None or not 0 < self.marker < self.square:
                raise CalibrationError("a ChArUco board needs --marker METRES, smaller than --square")

    @property
    def name(self) -> str:
        kind = f"ChArUco {self.dictionary}" if self.dictionary else "checkerboard"
        return f"{kind} {self.cols}x{self.rows} inner corners, {self.square * 1000:g} mm squares"

    @property
    def is_charuco(self) -> bool:
        return self.dictionary is not None

    def object_points(self) -> np.ndarray:
        """(cols*rows, 3) corner positions in the board frame, in detection order (row by row)."""
        if self.is_charuco:  # OpenCV's own layout, so that ids index it directly
            return np.asarray(self.charuco().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)
        j, i = np.mgrid[0 : self.rows, 0 : self.cols]
        return np.stack([i.ravel() * self.square, j.ravel() * self.square, np.zeros(i.size)], axis=1).astype(np.float64)

    def symmetric(self) -> bool:
        """True where a 180-degree turn of the board maps its corner grid onto itself (order is then ambiguous)."""
        return not self.is_charuco and (self.cols % 2) == (self.rows % 2)

    def charuco(self) -> "cv2.aruco.CharucoBoard":
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.cols + 1, self.rows + 1), self.square, self.marker, dictionary)


def parse_board(text: str, square: float, dictionary: str | None = None, marker: float | None = None) -> Board:
    """'9x6' (inner corners) -> Board; errors say what the format is."""
    m = _BOARD_RE.match(text or "")
    if not m:
        raise CalibrationError(f"--board '{text}': expected COLSxROWS inner corners, e.g. 9x6")
    return Board(int(m.group(1)), int(m.group(2)), float(square), dictionary, marker)


@dataclass(frozen=True)
class Detection:
    """Corners found in one image: pixel positions and their indices into `Board.object_points()`."""

    name: str
    corners: np.ndarray  # (N, 2) float64, pixels (OpenCV convention: integer = pixel centre)
    ids: np.ndarray  # (N,) int

    def __len__(self) -> int:
        return len(self.ids)


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:  # mono16 recorders: scale to 8 bit for the corner finders
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return image


def _local_spacing(corners: np.ndarray, cols: int) -> np.ndarray:
    """Per corner, the distance to its nearest grid neighbour (pixels)."""
    grid = corners.reshape(-1, cols, 2)
    d = np.full(grid.shape[:2], np.inf)
    dx = np.linalg.norm(np.diff(grid, axis=1), axis=2)
    dy = np.linalg.norm(np.diff(grid, axis=0), axis=2)
    d[:, :-1] = np.minimum(d[:, :-1], dx)
    d[:, 1:] = np.minimum(d[:, 1:], dx)
    d[:-1, :] = np.minimum(d[:-1, :], dy)
    d[1:, :] = np.minimum(d[1:, :], dy)
    return d.ravel()


def refine_corners(gray: np.ndarray, corners: np.ndarray, cols: int) -> np.ndarray:
    """Sub-pixel corners in passes: a window of 0.4 x the local corner spacing reaches the corner from the
    finder's estimate; cornerSubPix keeps a point that would move farther than its window, so points left where
    they were get a wider window; last a small window removes the bias that curved (distorted) edges give a
    large one."""
    pts = corners.reshape(-1, 1, 2).astype(np.float32).copy()
    spacing = _local_spacing(pts.reshape(-1, 2), cols)

    def run(sel: np.ndarray, win: np.ndarray) -> None:
        for w in np.unique(win):
            idx = sel[win == w]
            pts[idx] = cv2.cornerSubPix(gray, pts[idx].copy(), (int(w), int(w)), (-1, -1), _SUBPIX)

    start = pts.copy()
    everything = np.arange(len(pts))
    run(everything, np.clip(np.floor(spacing * 0.4), 2, 11).astype(int))
    stuck = np.flatnonzero(np.linalg.norm((pts - start).reshape(-1, 2), axis=1) < 1e-4)
    if len(stuck):
        run(stuck, np.clip(np.floor(spacing[stuck] * 0.6), 3, 14).astype(int))
    run(everything, np.clip(np.floor(spacing * 0.4), 2, 4).astype(int))
    return pts.reshape(-1, 2).astype(np.float64)


_SUBPIX = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-4)


def detect(image: np.ndarray, board: Board, name: str = "") -> Detection | None:
    """Find the board; None when it is not (fully, for a checkerboard) visible."""
    gray = _gray(image)
    if board.is_charuco:
        return _detect_charuco(gray, board, name)
    size = (board.cols, board.rows)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    ok, corners = cv2.findChessboardCorners(gray, size, flags=flags)
    if ok:
        corners = refine_corners(gray, corners, board.cols)
    else:  # the sector-based detector copes better with strong fisheye distortion and blur
        ok, corners = cv2.findChessboardCornersSB(gray, size, flags=cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY)
        if not ok:
            return None
    pts = corners.reshape(-1, 2).astype(np.float64)
    return Detection(name, pts, np.arange(len(pts)))


def _detect_charuco(gray: np.ndarray, board: Board, name: str) -> Detection | None:
    detector = cv2.aruco.CharucoDetector(board.charuco())
    corners, ids, _, _ = detector.detectBoard(gray)
    if ids is None or len(ids) < 6:  # fewer corners cannot constrain a pose with margin
        return None
    corners = cv2.cornerSubPix(gray, corners.astype(np.float32), (3, 3), (-1, -1), _SUBPIX)
    return Detection(name, corners.reshape(-1, 2).astype(np.float64), ids.reshape(-1).astype(int))
