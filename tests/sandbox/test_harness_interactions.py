"""BotHarness drives the real bot's interactions: a tiny test-only cog (a hybrid command, a button) is loaded
into the real bot, synced to the sandbox server, and used through ``harness.slash`` and ``harness.click``."""

from __future__ import annotations

import discord
from discord.ext import commands

from tests.harness import BotHarness


class Ping(commands.Cog):
    """Test only: one hybrid command whose answer carries a button."""

    @commands.hybrid_command(name="pingtest", description="Answer with a button")
    async def pingtest(self, ctx: commands.Context, word: str) -> None:
        view = discord.ui.View(timeout=None)
        button: discord.ui.Button = discord.ui.Button(label=f"again {word}", custom_id="pingtest-again")

        async def again(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"again {word}", ephemeral=True)

        button.callback = again  # type: ignore[method-assign]
        view.add_item(button)
        await ctx.send(f"pong {word}", view=view)


async def test_harness_slash_and_click_on_the_real_bot(harness: BotHarness) -> None:
    bot = harness.bot
    await bot.add_cog(Ping())
    guild = discord.Object(harness.guild_id)
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    used = await harness.slash("pingtest", word="hi")
    assert [m.content for m in used.messages] == ["pong hi"]
    clicked = await harness.click(used.messages[0].id, 1, user="admin")
    assert [m.content for m in clicked.messages] == ["again hi"]
    assert harness.ephemeral("admin") == clicked.messages and not harness.ephemeral("member")
