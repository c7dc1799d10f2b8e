using System.Net;
using KestrelApp;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Faults;

/// <summary>Binds the transport cannot honour fail loudly and leave what is already bound serving.</summary>
public sealed class BadInputTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Second_bind_on_a_bound_endpoint_throws_AddressInUseException_and_the_first_keeps_serving()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var services = BuildServices();
        var factory = Factory(services);
        await using var first = await factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0), ct);
        var endPoint = Assert.IsType<IPEndPoint>(first.EndPoint);

        await Assert.ThrowsAsync<AddressInUseException>(() => factory.BindAsync(endPoint, ct).AsTask());

        // The failed bind took nothing from the first listener: a connection still goes through it.
        using var client = await RawClient.ConnectAsync(endPoint);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(Timeout);
        await using var connection = await first.AcceptAsync(cts.Token);
        Assert.NotNull(connection);
        await connection.Transport.Output.WriteAsync("still here"u8.ToArray(), ct);
        await connection.Transport.Output.CompleteAsync();
        Assert.Equal("still here"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
        Assert.Equal(1, services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);
    }

    [Fact]
    public async Task Second_host_on_the_first_hosts_port_fails_to_start_with_address_in_use_and_the_first_keeps_serving()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var server = await SampleServer.StartAsync();

        var builder = SampleHost.CreateBuilder(["--urls", $"http://127.0.0.1:{server.Port}"]);
        builder.Logging.ClearProviders();
        await using var second = builder.Build();
        var ex = await Assert.ThrowsAsync<IOException>(() => second.StartAsync(ct));
        Assert.Contains("address already in use", ex.Message, StringComparison.Ordinal);
        Assert.IsType<AddressInUseException>(ex.InnerException);
        Assert.Equal(0, second.Services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);

        using var client = server.CreateClosingClient();
        Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", ct));
        Assert.Equal(1, server.Counters.ConnectionsAccepted);
    }

    [Fact]
    public async Task Binding_a_named_pipe_endpoint_throws_NotSupportedException_naming_it()
    {
        var endPoint = new NamedPipeEndPoint("winsock-faults-pipe");
        var ex = await BindUnsupportedAsync(endPoint);
        Assert.Contains(nameof(NamedPipeEndPoint), ex.Message, StringComparison.Ordinal);
        Assert.Contains(endPoint.ToString(), ex.Message, StringComparison.Ordinal);
        Assert.Contains("winsock-faults-pipe", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Binding_a_file_handle_endpoint_throws_NotSupportedException_naming_it()
    {
        var endPoint = new FileHandleEndPoint(42, FileHandleType.Tcp);
        var ex = await BindUnsupportedAsync(endPoint);
        Assert.Contains(nameof(FileHandleEndPoint), ex.Message, StringComparison.Ordinal);
        Assert.Contains(endPoint.ToString()!, ex.Message, StringComparison.Ordinal);
    }

    private static async Task<NotSupportedException> BindUnsupportedAsync(EndPoint endPoint)
    {
        await using var services = BuildServices();
        var ex = await Assert.ThrowsAsync<NotSupportedException>(
            () => Factory(services).BindAsync(endPoint, TestContext.Current.CancellationToken).AsTask());
        // Nothing was bound, so nothing was accepted or counted as listening.
        var counters = services.GetRequiredService<WinsockTransportCounters>();
        Assert.Equal(0, counters.ConnectionsAccepted);
        Assert.Equal(0, counters.SocketsCreated);
        return ex;
    }

    private static ServiceProvider BuildServices()
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddWinsockReuseTransport(static _ => { });
        return services.BuildServiceProvider();
    }

    private static IConnectionListenerFactory Factory(IServiceProvider services)
        => (IConnectionListenerFactory)Listener.ListenerTests.Ours(services);
}
