"""Exact Sudoku solver and a seeded generator of puzzles with exactly one solution.

Boards are lists of 81 ints (row-major, 0 = blank). The solver is a depth-first search over bitmasks that always
branches on the blank cell with the fewest candidates; the generator fills a random complete grid, then clears cells
in random order, keeping a cell blank only if the puzzle still has exactly one solution, until it has the blanks
asked for or no clue can be removed (a minimal puzzle).
"""

import random

FULL = 0b1111111110  # candidate bits 1..9
BOX_OF = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
BIT_COUNT = [bin(m).count("1") for m in range(1 << 10)]
DIGITS_OF = [[d for d in range(1, 10) if m >> d & 1] for m in range(1 << 10)]


class Sudoku:
    """Search state: the board and, per row/column/box, the bitmask of digits already used."""

    def __init__(self, board: list[int]):
        if len(board) != 81 or any(not 0 <= v <= 9 for v in board):
            raise ValueError("a Sudoku board is 81 values in 0..9 (0 = blank)")
        self.board = list(board)
        self.rows, self.cols, self.boxes = [0] * 9, [0] * 9, [0] * 9
        self.consistent = True
        for i, v in enumerate(self.board):
            if v:
                bit = 1 << v
                r, c, b = i // 9, i % 9, BOX_OF[i]
                if (self.rows[r] | self.cols[c] | self.boxes[b]) & bit:
                    self.consistent = False
                self.rows[r] |= bit
                self.cols[c] |= bit
                self.boxes[b] |= bit

    def _set(self, i: int, v: int) -> None:
        bit = 1 << v
        self.board[i] = v
        self.rows[i // 9] |= bit
        self.cols[i % 9] |= bit
        self.boxes[BOX_OF[i]] |= bit

    def _clear(self, i: int, v: int) -> None:
        bit = ~(1 << v)
        self.board[i] = 0
        self.rows[i // 9] &= bit
        self.cols[i % 9] &= bit
        self.boxes[BOX_OF[i]] &= bit

    def _most_constrained(self) -> tuple[int, int]:
        """(cell, candidate mask) of the blank cell with fewest candidates; (-1, 0) when the board is full."""
        best, best_mask, best_count = -1, 0, 10
        for i in range(81):
            if self.board[i] == 0:
                mask = FULL & ~(self.rows[i // 9] | self.cols[i % 9] | self.boxes[BOX_OF[i]])
                count = BIT_COUNT[mask]
                if count < best_count:
                    best, best_mask, best_count = i, mask, count
                    if count <= 1:
                        break
        return best, best_mask

    def search(self, limit: int, rng: random.Random | None = None, found: list | None = None) -> int:
        """Number of solutions, counting stops at `limit`; solutions are appended to `found`. `rng` randomises the
        order digits are tried in (used to draw random complete grids)."""
        if not self.consistent:
            return 0
        cell, mask = self._most_constrained()
        if cell < 0:
            if found is not None:
                found.append(list(self.board))
            return 1
        digits = DIGITS_OF[mask]
        if rng is not None:
            digits = rng.sample(digits, len(digits))
        total = 0
        for v in digits:
            self._set(cell, v)
            total += self.search(limit - total, rng, found)
            self._clear(cell, v)
            if total >= limit:
                break
        return total


def count_solutions(board: list[int], limit: int = 2) -> int:
    return Sudoku(board).search(limit)


def solve(board: list[int]) -> list[int] | None:
    """The first solution found, or None if there is none."""
    found: list = []
    Sudoku(board).search(1, found=found)
    return found[0] if found else None


def random_solution(rng: random.Random) -> list[int]:
    found: list = []
    Sudoku([0] * 81).search(1, rng, found)
    return found[0]


def generate_puzzle(rng: random.Random, blanks: int = 81) -> tuple[list[int], list[int]]:
    """(puzzle, solution): a puzzle with exactly one solution and `blanks` blank cells, or fewer where no further
    clue can be removed (the default, 81, always gives a minimal puzzle)."""
    solution = random_solution(rng)
    puzzle = list(solution)
    cleared = 0
    for cell in rng.sample(range(81), 81):
        if cleared == blanks:
            break
        puzzle[cell] = 0
        if count_solutions(puzzle, 2) == 1:
            cleared += 1
        else:
            puzzle[cell] = solution[cell]
    return puzzle, solution
