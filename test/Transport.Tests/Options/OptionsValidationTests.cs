using System.Globalization;
using System.Net;
using System.Net.Sockets;
using KestrelApp;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Options;

/// <summary>Bad options stop the host from starting, naming the option; edge values that are valid serve.</summary>
public sealed class OptionsValidationTests
{
    [Theory]
    [InlineData(nameof(WinsockTransportOptions.PendingAccepts), "0")]
    [InlineData(nameof(WinsockTransportOptions.PendingAccepts), "1025")]
    [InlineData(nameof(WinsockTransportOptions.MaxPooledSockets), "-1")]
    [InlineData(nameof(WinsockTransportOptions.MaxPooledSockets), "65537")]
    [InlineData(nameof(WinsockTransportOptions.MaxPendingDisconnects), "0")]
    [InlineData(nameof(WinsockTransportOptions.DrainTimeout), "00:00:00")]
    [InlineData(nameof(WinsockTransportOptions.DrainTimeout), "-00:00:01")]
    [InlineData(nameof(WinsockTransportOptions.DrainTimeout), "00:05:00.001")]
    [InlineData(nameof(WinsockTransportOptions.DisconnectTimeout), "00:00:00")]
    [InlineData(nameof(WinsockTransportOptions.DisconnectTimeout), "00:05:01")]
    [InlineData(nameof(WinsockTransportOptions.HalfCloseTimeout), "00:00:00")]
    [InlineData(nameof(WinsockTransportOptions.Backlog), "0")]
    [InlineData(nameof(WinsockTransportOptions.MaxReadBufferSize), "-1")]
    [InlineData(nameof(WinsockTransportOptions.MaxWriteBufferSize), "-1")]
    [InlineData(nameof(WinsockTransportOptions.DeferFinTimeout), "-00:00:00.001")]
    [InlineData(nameof(WinsockTransportOptions.DeferFinTimeout), "00:00:05.001")]
    [InlineData(nameof(WinsockTransportOptions.IOQueueCount), "-1")]
    [InlineData(nameof(WinsockTransportOptions.DescriptorReserve), "-1")]
    [InlineData(nameof(WinsockTransportOptions.DescriptorReserve), "65537")]
    [InlineData(nameof(WinsockTransportOptions.CreateBoundListenSocket), null)]
    public async Task Invalid_option_fails_startup_naming_the_option(string option, string? value)
    {
        var builder = SampleHost.CreateBuilder(["--urls", "http://127.0.0.1:0"], options => Set(options, option, value));
        builder.Logging.ClearProviders();

        // WebApplication's Build() already resolves the server and so the transport, which reads the
        // options: the failure comes from Build(), before StartAsync. Either way the host never serves.
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(async () =>
        {
            await using var app = builder.Build();
            await app.StartAsync(TestContext.Current.CancellationToken);
        });
        // Exactly one failure: the one option set wrong, by name.
        var failure = Assert.Single(ex.Failures);
        Assert.Contains($"{nameof(WinsockTransportOptions)}.{option} ", failure, StringComparison.Ordinal);
        Assert.Contains(option, ex.Message, StringComparison.Ordinal);
        Assert.Equal(typeof(WinsockTransportOptions), ex.OptionsType);
    }

    [Theory]
    [InlineData(nameof(WinsockTransportOptions.MaxPooledSockets), "0")]
    [InlineData(nameof(WinsockTransportOptions.MaxReadBufferSize), null)]
    [InlineData(nameof(WinsockTransportOptions.MaxReadBufferSize), "0")]
    [InlineData(nameof(WinsockTransportOptions.MaxWriteBufferSize), null)]
    [InlineData(nameof(WinsockTransportOptions.PendingAccepts), "1")]
    [InlineData(nameof(WinsockTransportOptions.PendingAccepts), "1024")]
    [InlineData(nameof(WinsockTransportOptions.DrainTimeout), "00:05:00")]
    [InlineData(nameof(WinsockTransportOptions.DisconnectTimeout), "00:00:00.001")]
    [InlineData(nameof(WinsockTransportOptions.Backlog), "1")]
    [InlineData(nameof(WinsockTransportOptions.DeferFinTimeout), "00:00:00")]
    [InlineData(nameof(WinsockTransportOptions.DeferFinTimeout), "00:00:05")]
    [InlineData(nameof(WinsockTransportOptions.IOQueueCount), "0")]
    [InlineData(nameof(WinsockTransportOptions.IOQueueCount), "1")]
    [InlineData(nameof(WinsockTransportOptions.DescriptorReserve), "0")]
    [InlineData(nameof(WinsockTransportOptions.DescriptorReserve), "65536")]
    public async Task Valid_edge_value_starts_and_serves(string option, string? value)
    {
        await using var server = await SampleServer.StartAsync(configure: options => Set(options, option, value));
        using var client = server.CreateClosingClient();

        var body = await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken);

        Assert.Equal(SampleHost.PlaintextBody, body);
        Assert.Equal(1, server.Counters.ConnectionsAccepted);
        // No pooled sockets allowed means no reuse at all; elsewhere the platform decides.
        Assert.Equal(!(option == nameof(WinsockTransportOptions.MaxPooledSockets) && value == "0") && ReusePlatform.ReusesByDefault, server.Counters.ReuseActive);
    }

    [Theory]
    [InlineData("winsock")]
    [InlineData("sockets")]
    public async Task Port_in_use_fails_startup_the_way_kestrel_does(string transport)
    {
        using var squatter = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        squatter.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        squatter.Listen();
        var port = ((IPEndPoint)squatter.LocalEndPoint!).Port;

        var builder = SampleHost.CreateBuilder(["--transport", transport, "--urls", $"http://127.0.0.1:{port}"]);
        builder.Logging.ClearProviders();
        await using var app = builder.Build();

        var ex = await Assert.ThrowsAsync<IOException>(() => app.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("address already in use", ex.Message, StringComparison.Ordinal);
        Assert.IsType<AddressInUseException>(ex.InnerException);
    }

    private static void Set(WinsockTransportOptions options, string option, string? value)
    {
        switch (option)
        {
            case nameof(WinsockTransportOptions.PendingAccepts): options.PendingAccepts = Int(value); break;
            case nameof(WinsockTransportOptions.MaxPooledSockets): options.MaxPooledSockets = Int(value); break;
            case nameof(WinsockTransportOptions.MaxPendingDisconnects): options.MaxPendingDisconnects = Int(value); break;
            case nameof(WinsockTransportOptions.Backlog): options.Backlog = Int(value); break;
            case nameof(WinsockTransportOptions.DrainTimeout): options.DrainTimeout = Time(value); break;
            case nameof(WinsockTransportOptions.DisconnectTimeout): options.DisconnectTimeout = Time(value); break;
            case nameof(WinsockTransportOptions.HalfCloseTimeout): options.HalfCloseTimeout = Time(value); break;
            case nameof(WinsockTransportOptions.DeferFinTimeout): options.DeferFinTimeout = Time(value); break;
            case nameof(WinsockTransportOptions.MaxReadBufferSize): options.MaxReadBufferSize = Long(value); break;
            case nameof(WinsockTransportOptions.MaxWriteBufferSize): options.MaxWriteBufferSize = Long(value); break;
            case nameof(WinsockTransportOptions.IOQueueCount): options.IOQueueCount = Int(value); break;
            case nameof(WinsockTransportOptions.DescriptorReserve): options.DescriptorReserve = Int(value); break;
            case nameof(WinsockTransportOptions.CreateBoundListenSocket): options.CreateBoundListenSocket = value is null ? null! : WinsockTransportOptions.CreateDefaultBoundListenSocket; break;
            default: throw new ArgumentOutOfRangeException(nameof(option), option, "not an option this test knows");
        }

        static int Int(string? value) => int.Parse(value!, CultureInfo.InvariantCulture);

        static long? Long(string? value) => value is null ? null : long.Parse(value, CultureInfo.InvariantCulture);

        static TimeSpan Time(string? value) => TimeSpan.Parse(value!, CultureInfo.InvariantCulture);
    }
}
