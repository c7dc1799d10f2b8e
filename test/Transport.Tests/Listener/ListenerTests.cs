using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Listener;

/// <summary>The transport as Kestrel drives it: an <see cref="IConnectionListenerFactory"/>, used directly.</summary>
public sealed class ListenerTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Factory_binds_ip_endpoints_only()
    {
        await using var services = BuildServices();
        var factory = Assert.Single(services.GetServices<IConnectionListenerFactory>());
        var selector = Assert.IsAssignableFrom<IConnectionListenerFactorySelector>(factory);

        Assert.True(selector.CanBind(new IPEndPoint(IPAddress.Loopback, 0)));
        Assert.True(selector.CanBind(new IPEndPoint(IPAddress.IPv6Any, 8080)));
        Assert.False(selector.CanBind(new NamedPipeEndPoint("winsock-test")));
        Assert.False(selector.CanBind(new FileHandleEndPoint(42, FileHandleType.Tcp)));
    }

    [NotUnderWineFact(WinePlatform.NoUnixSockets)]
    public async Task Factory_leaves_unix_domain_socket_endpoints_to_other_transports()
    {
        await using var services = BuildServices();
        var selector = Assert.IsAssignableFrom<IConnectionListenerFactorySelector>(Assert.Single(services.GetServices<IConnectionListenerFactory>()));
        Assert.False(selector.CanBind(new UnixDomainSocketEndPoint(Path.Combine(Path.GetTempPath(), "winsock-test.sock"))));
    }

    [Fact]
    public async Task Bound_listener_accepts_a_connection_that_carries_bytes_both_ways()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var services = BuildServices();
        await using var listener = await BindAsync(services);
        var endPoint = Assert.IsType<IPEndPoint>(listener.EndPoint);
        Assert.Equal(IPAddress.Loopback, endPoint.Address);
        Assert.NotEqual(0, endPoint.Port);

        using var client = await RawClient.ConnectAsync(endPoint);
        await using var connection = await AcceptAsync(listener);
        Assert.NotNull(connection);
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);

        await RawClient.SendAsync(client, "ping");
        var input = connection.Transport.Input;
        var request = await input.ReadAtLeastAsync(4, ct);
        Assert.Equal("ping", Encoding.ASCII.GetString(request.Buffer));
        input.AdvanceTo(request.Buffer.End);

        await connection.Transport.Output.WriteAsync("pong"u8.ToArray(), ct);
        await connection.Transport.Output.CompleteAsync();
        Assert.Equal("pong", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(client, Timeout)));

        client.Shutdown(SocketShutdown.Send);
        var end = await input.ReadAsync(ct);
        Assert.True(end.IsCompleted);
        Assert.True(end.Buffer.IsEmpty);
        input.AdvanceTo(end.Buffer.End);
        Assert.Equal(1, services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);
    }

    [Fact]
    public async Task Unbind_before_any_accept_makes_AcceptAsync_return_null_and_refuses_new_connections()
    {
        await using var services = BuildServices();
        var listener = await BindAsync(services);
        var endPoint = (IPEndPoint)listener.EndPoint;

        await listener.UnbindAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Null(await AcceptAsync(listener));

        var refused = await Assert.ThrowsAsync<SocketException>(async () => (await RawClient.ConnectAsync(endPoint)).Dispose());
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);

        await listener.DisposeAsync();
        // A second dispose is a no-op.
        await listener.DisposeAsync();
        Assert.Equal(0, services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);
    }

    [Fact]
    public async Task Dispose_twice_after_serving_is_fine()
    {
        await using var services = BuildServices();
        var listener = await BindAsync(services);
        var client = await RawClient.ConnectAsync((IPEndPoint)listener.EndPoint);
        var connection = await AcceptAsync(listener);
        Assert.NotNull(connection);
        // The client leaves first, so the connection's end is a clean FIN both ways.
        client.Dispose();
        await connection.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);

        await listener.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        await listener.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Null(await AcceptAsync(listener));
    }

    [NotUnderWineFact(WinePlatform.NoUnixSockets)]
    public async Task In_a_host_unix_socket_endpoints_fall_through_to_kestrels_transport_while_tcp_uses_ours()
    {
        var ct = TestContext.Current.CancellationToken;
        var path = Path.Combine(Path.GetTempPath(), $"winsock-{Guid.NewGuid():N}.sock");
        var served = new ConcurrentQueue<Type>();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseWinsockReuseTransport();
        builder.WebHost.UseKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Run(HelloAsync));
            kestrel.ListenUnixSocket(path, listen => listen.Run(HelloAsync));
        });
        await using var app = builder.Build();
        await app.StartAsync(ct);
        try
        {
            var counters = app.Services.GetRequiredService<WinsockTransportCounters>();
            using (var uds = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                await uds.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                Assert.Equal("hello", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(uds, Timeout)));
            }

            Assert.Equal(0, counters.ConnectionsAccepted);
            Assert.DoesNotContain(typeof(WinsockTransportCounters).Assembly, served.Select(t => t.Assembly));

            var tcp = new Uri(app.Urls.Single(url => url.StartsWith("http://127.0.0.1:", StringComparison.Ordinal)));
            using (var client = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, tcp.Port)))
            {
                Assert.Equal("hello", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(client, Timeout)));
            }

            Assert.Equal(1, counters.ConnectionsAccepted);
            Assert.Equal(2, served.Count);
            Assert.Equal(typeof(WinsockTransportCounters).Assembly, served.Last().Assembly);
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            File.Delete(path);
        }

        async Task HelloAsync(ConnectionContext context)
        {
            served.Enqueue(context.GetType());
            await context.Transport.Output.WriteAsync("hello"u8.ToArray(), ct);
        }
    }

    internal static ServiceProvider BuildServices(Action<WinsockTransportOptions>? configure = null)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddWinsockReuseTransport(configure ?? (static _ => { }));
        return services.BuildServiceProvider();
    }

    internal static async Task<IConnectionListener> BindAsync(IServiceProvider services)
    {
        var factory = services.GetServices<IConnectionListenerFactory>().OfType<IConnectionListenerFactorySelector>().Single();
        return await ((IConnectionListenerFactory)factory).BindAsync(new IPEndPoint(IPAddress.Loopback, 0), TestContext.Current.CancellationToken);
    }

    internal static async Task<ConnectionContext?> AcceptAsync(IConnectionListener listener)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Timeout);
        return await listener.AcceptAsync(cts.Token);
    }
}
