using KestrelApp;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Options;

/// <summary>Options come from the configuration section Kestrel:Transport:Winsock too; code set on top wins.</summary>
public sealed class ConfigurationBindingTests
{
    [Fact]
    public async Task Options_bind_from_the_Kestrel_Transport_Winsock_section()
    {
        await using var server = await SampleServer.StartAsync(configureBuilder: builder =>
            builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Winsock:PendingAccepts"] = "3",
                ["Kestrel:Transport:Winsock:DrainTimeout"] = "00:00:01.5",
                ["Kestrel:Transport:Winsock:ReuseSockets"] = "false",
                ["Kestrel:Transport:Winsock:MaxReadBufferSize"] = "",
                ["Kestrel:Transport:Winsock:IOQueueCount"] = "0",
                ["Kestrel:Transport:Winsock:WaitForDataBeforeAllocatingBuffer"] = "false",
                ["Kestrel:Transport:Winsock:UnsafePreferInlineScheduling"] = "true",
            }));

        var options = server.App.Services.GetRequiredService<IOptions<WinsockTransportOptions>>().Value;
        Assert.Equal(3, options.PendingAccepts);
        Assert.Equal(TimeSpan.FromSeconds(1.5), options.DrainTimeout);
        Assert.False(options.ReuseSockets);
        Assert.Equal(0, options.IOQueueCount);
        Assert.False(options.WaitForDataBeforeAllocatingBuffer);
        Assert.True(options.UnsafePreferInlineScheduling);
        // Not bindable from configuration: left at its default.
        Assert.Equal(WinsockTransportOptions.CreateDefaultBoundListenSocket, options.CreateBoundListenSocket);
        // The listener really runs with them.
        using var client = server.CreateClosingClient();
        Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken));
        Assert.Equal("off: ReuseSockets = false", server.Counters.ReuseStatus);
    }

    [Fact]
    public async Task Options_set_in_code_win_over_configuration()
    {
        await using var server = await SampleServer.StartAsync(
            configure: options => options.PendingAccepts = 5,
            configureBuilder: builder => builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Transport:Winsock:PendingAccepts"] = "3",
                ["Kestrel:Transport:Winsock:Backlog"] = "64",
            }));

        var options = server.App.Services.GetRequiredService<IOptions<WinsockTransportOptions>>().Value;
        Assert.Equal(5, options.PendingAccepts);
        Assert.Equal(64, options.Backlog);
    }

    [Fact]
    public async Task An_invalid_value_from_configuration_fails_startup_naming_the_option()
    {
        var builder = SampleHost.CreateBuilder(["--urls", "http://127.0.0.1:0", "--Kestrel:Transport:Winsock:MaxPendingDisconnects=0"]);
        builder.Logging.ClearProviders();

        var ex = await Assert.ThrowsAsync<OptionsValidationException>(async () =>
        {
            await using var app = builder.Build();
            await app.StartAsync(TestContext.Current.CancellationToken);
        });
        Assert.Contains("WinsockTransportOptions.MaxPendingDisconnects", Assert.Single(ex.Failures), StringComparison.Ordinal);
    }
}
