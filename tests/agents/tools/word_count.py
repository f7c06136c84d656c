"""Test tool (sync): count the words in a text."""

from pydantic import BaseModel, Field

from regina.runtime.tools.base import tool


class Params(BaseModel):
    text: str = Field(description="The text whose words are counted")


@tool(description="Count the words in a text", parameters=Params)
def count_words(params: Params) -> dict[str, int]:
    return {"words": len(params.text.split())}
