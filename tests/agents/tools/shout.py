"""Test tool (async): upper-case a text."""

import asyncio

from pydantic import BaseModel, Field

from regina.runtime.tools.base import tool


class Params(BaseModel):
    text: str = Field(description="The text to shout")


@tool(description="Return the text in upper case, with an exclamation mark", parameters=Params)
async def shout(params: Params) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"shouted": params.text.upper() + "!"}
