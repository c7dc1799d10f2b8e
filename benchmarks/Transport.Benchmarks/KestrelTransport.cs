using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Transport.Winsock;

namespace Transport.Benchmarks;

/// <summary>
/// A listener bound the way Kestrel binds one: the services of a host with <c>UseKestrel()</c>, plus
/// <c>AddWinsockReuseTransport()</c> or not, so both transports share Kestrel's registrations (memory
/// pool factory, options, logging). As in benchmarks/TransportBench/Transports.cs; the host is never
/// started, only its services are used.
/// </summary>
internal sealed class KestrelTransport : IAsyncDisposable
{
    private readonly IHost _host;

    private KestrelTransport(IHost host, IConnectionListener listener)
    {
        _host = host;
        Listener = listener;
    }

    public IConnectionListener Listener { get; }

    public IPEndPoint EndPoint => (IPEndPoint)Listener.EndPoint;

    /// <summary>The Winsock transport's counters; null for Kestrel's Sockets transport.</summary>
    public WinsockTransportCounters? WinsockCounters => _host.Services.GetService<WinsockTransportCounters>();

    /// <summary>Binds 127.0.0.1 on an ephemeral port with the Winsock transport or Kestrel's Sockets transport.</summary>
    public static async Task<KestrelTransport> BindAsync(bool winsock)
    {
        var host = new HostBuilder()
            // No logging providers: nothing is formatted or written in the measured path.
            .ConfigureLogging(static logging => logging.ClearProviders())
            .ConfigureWebHost(web =>
            {
                web.UseKestrel();
                if (winsock)
                {
                    web.ConfigureServices(static services => services.AddWinsockReuseTransport());
                }

                web.Configure(static _ => { });
            })
            .Build();

        try
        {
            var endPoint = new IPEndPoint(IPAddress.Loopback, 0);
            var factory = Select(host.Services, endPoint);
            var expected = winsock ? "WinsockTransportFactory" : "SocketTransportFactory";
            if (factory.GetType().Name != expected)
            {
                throw new InvalidOperationException($"Kestrel would bind {endPoint} with {factory.GetType().FullName}, not {expected}.");
            }

            var listener = await factory.BindAsync(endPoint).ConfigureAwait(false);
            return new KestrelTransport(host, listener);
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    // Kestrel's TransportManager: registrations newest first, the first that can bind the endpoint wins.
    private static IConnectionListenerFactory Select(IServiceProvider services, EndPoint endPoint)
    {
        foreach (var factory in services.GetServices<IConnectionListenerFactory>().Reverse())
        {
            if (factory is not IConnectionListenerFactorySelector selector || selector.CanBind(endPoint))
            {
                return factory;
            }
        }

        throw new InvalidOperationException($"No IConnectionListenerFactory can bind {endPoint}.");
    }

    public async ValueTask DisposeAsync()
    {
        await Listener.UnbindAsync().ConfigureAwait(false);
        await Listener.DisposeAsync().ConfigureAwait(false);
        if (_host is IAsyncDisposable asyncDisposable)
        {
            await asyncDisposable.DisposeAsync().ConfigureAwait(false);
        }
        else
        {
            _host.Dispose();
        }
    }
}
